//! The buddy list's backup: sealed so that whatever stores it (the login server, next to the
//! account) sees only ciphertext and can neither forge it nor roll it back undetected by a
//! device that saw a newer one.
//!
//! ```text
//! "NBL1" ‖ u64 version ‖ u64 written at (Unix seconds) ‖ u16 certificate length ‖
//! writer's certificate ‖ 12-byte nonce ‖ u32 ciphertext length ‖ ciphertext ‖
//! 64-byte signature
//! ```
//!
//! - **Encrypted** with ChaCha20-Poly1305 under the user's list key (32 bytes, known only to
//!   the user's devices; how it reaches a new device is the key envelope's business), the
//!   header before the nonce as associated data. The nonce is random: a key seals a few
//!   backups a day, far from the 2^48 at which random 96-bit nonces risk a repeat.
//! - **Signed** by the device that wrote it, with the Ed25519 key its certificate (from the
//!   login authority) vouches for, over everything before the signature. A reader checks the
//!   certificate against its trusted authorities as of the time the backup says it was
//!   written (not in the future), and that it names the same user; the login server checks
//!   the same before it stores one ([`verify_writer`]), and refuses revoked devices.
//! - **Versioned**: each backup's version is above the one it replaces. A reader passes the
//!   highest version it saw; an older one is [`BackupError::RolledBack`].
//!
//! What the store learns: the user's name (it files the blob under it), the writing device's
//! certificate, when and how often the list changed, and the ciphertext's length (about how
//! many contacts). Not who they are. What it can do: withhold the backup, or hand a new
//! install, which has seen no version yet, an older genuine one (the install merges it, and
//! the next device to synchronise brings the newer edits back). A store that is not the
//! authority cannot forge or alter one (the signature), nor read one (the key). The login
//! server's operator *is* the authority: it can certify a device of its own for the user and
//! sign with it, and it sees the password at login, which unwraps the key (see
//! [`super::envelope`]).
//!
//! Still open:
//! - the list key is not rotated when a device is revoked, so a stolen device that kept the
//!   key can read backups it fetches some other way than from the login server (which
//!   refuses revoked devices);
//! - a reader checks the writer's certificate as of the time the backup says it was written
//!   and does not consult revocations: the login server's own check (at its clock, against
//!   its revocations) is what keeps an expired or revoked device from storing one;
//! - a list whose encoding passes [`MAX_BACKUP_LEN`] (about 1,300 plain contacts, fewer with
//!   many groups) is refused with [`BackupError::TooBig`] until backups travel in pieces;
//!   removed contacts and left groups stay as tombstones and count.

use bytes::{BufMut, BytesMut};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

use crate::crypto::{
    verify_signature, CertError, Certificate, DeviceId, DeviceIdentity, TrustedAuthorities,
    UnixTime, UserName, MAX_CERT_LEN,
};
use crate::rng::Rng;
use crate::wire::{DecodeError, Reader};

use super::BuddyList;

/// The first bytes of a backup.
const MAGIC: &[u8; 4] = b"NBL1";
/// The signature's domain.
const CONTEXT: &[u8] = b"natter-buddy-list-backup";
/// The largest backup, bytes: what one login-server message carries (about 1,300 contacts).
pub const MAX_BACKUP_LEN: usize = 64_000;
/// How far ahead of the reader's clock a backup's time may be, s.
const MAX_AHEAD_S: u64 = 86_400;

/// The key the buddy list's backups are encrypted with (shared by the user's devices).
#[derive(Clone)]
pub struct ListKey(pub [u8; 32]);

impl std::fmt::Debug for ListKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ListKey(..)")
    }
}

impl ListKey {
    fn cipher(&self) -> LessSafeKey {
        LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, &self.0).expect("a 32-byte ChaCha20 key"),
        )
    }
}

/// Why a backup was refused. The local list is never touched by a refused backup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// Not a backup, or truncated, or longer than its fields say.
    #[error("malformed backup: {0}")]
    Malformed(#[from] DecodeError),
    /// The writer's certificate does not verify.
    #[error("the backup's writer is not certified: {0}")]
    Certificate(CertError),
    /// The writer is a device of another user.
    #[error("the backup was written for {found}, not {expected}")]
    WrongUser {
        /// The user asked for.
        expected: UserName,
        /// The user the writer's certificate names.
        found: UserName,
    },
    /// The signature does not verify: the backup was altered.
    #[error("the backup's signature does not verify (altered)")]
    Signature,
    /// The ciphertext does not open with this key (altered, or another key).
    #[error("the backup does not decrypt with this key")]
    Decrypt,
    /// Older than a version this device saw: a rollback, or a stale copy.
    #[error("the backup is version {found}, older than version {seen} already seen")]
    RolledBack {
        /// The highest version this device saw.
        seen: u64,
        /// The backup's version.
        found: u64,
    },
    /// Written (it says) more than a day in the future, or (when sealing) holding an edit
    /// stamped more than a day ahead of the clock.
    #[error("the backup, or an edit in it, is from more than a day in the future")]
    FromTheFuture,
    /// The list does not fit a backup.
    #[error("the list does not fit a backup: {0}")]
    TooBig(String),
}

/// What the signed header of a backup says, once its writer and signature checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signed {
    /// The backup's version.
    pub version: u64,
    /// When it was written.
    pub written_at: UnixTime,
    /// The device that wrote it.
    pub writer: DeviceId,
}

/// A backup opened: its version and the list in it.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The backup's version.
    pub version: u64,
    /// Its list, as the list of the reading device.
    pub list: BuddyList,
}

/// Seal `list` as backup `version` (above the version it replaces), written at `now` by
/// `writer` (certified by `certificate`) under `key`.
///
/// # Errors
/// [`BackupError::TooBig`] when the list does not fit [`MAX_BACKUP_LEN`] (or its encoding).
pub fn seal(
    list: &BuddyList,
    version: u64,
    key: &ListKey,
    writer: &DeviceIdentity,
    certificate: &Certificate,
    now: UnixTime,
    rng: &mut Rng,
) -> Result<Vec<u8>, BackupError> {
    // A stamp more than a day ahead (a clock set years ahead when the edit was made) would
    // make every reader refuse the whole list: not written until the clock catches up.
    if list.latest_ms()
        > now
            .0
            .saturating_mul(1000)
            .saturating_add(MAX_AHEAD_S * 1000)
    {
        return Err(BackupError::FromTheFuture);
    }
    let mut sealed = list
        .encode()
        .map_err(|e| BackupError::TooBig(e.to_string()))?;
    let mut out = BytesMut::new();
    out.put_slice(MAGIC);
    out.put_u64(version);
    out.put_u64(now.0);
    let cert = certificate.to_bytes();
    out.put_u16(cert.len() as u16);
    out.put_slice(&cert);
    let aad_len = out.len();
    let mut nonce = [0u8; 12];
    rng.fill(&mut nonce);
    out.put_slice(&nonce);
    let tag = key
        .cipher()
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&out[..aad_len]),
            &mut sealed,
        )
        .expect("a buddy list is far below ChaCha20-Poly1305's length limit");
    out.put_u32((sealed.len() + tag.as_ref().len()) as u32);
    out.put_slice(&sealed);
    out.put_slice(tag.as_ref());
    let signature = writer.sign(CONTEXT, &out);
    out.put_slice(&signature);
    if out.len() > MAX_BACKUP_LEN {
        return Err(BackupError::TooBig(format!(
            "{} bytes, more than {MAX_BACKUP_LEN}",
            out.len()
        )));
    }
    Ok(out.to_vec())
}

/// A backup's parts (nothing checked but the framing).
struct Parts<'a> {
    version: u64,
    written_at: UnixTime,
    certificate: Certificate,
    aad: &'a [u8],
    nonce: [u8; 12],
    sealed: &'a [u8],
    signed: &'a [u8],
    signature: [u8; 64],
}

fn parts(backup: &[u8]) -> Result<Parts<'_>, BackupError> {
    if backup.len() > MAX_BACKUP_LEN {
        return Err(DecodeError::TooLong {
            what: "buddy list backup",
            len: backup.len(),
            max: MAX_BACKUP_LEN,
        }
        .into());
    }
    let mut r = Reader::new(backup);
    if r.array::<4>()? != *MAGIC {
        return Err(DecodeError::Invalid("buddy list backup").into());
    }
    let version = r.u64()?;
    let written_at = UnixTime(r.u64()?);
    let certificate = Certificate::decode(r.bytes_u16("certificate", MAX_CERT_LEN)?)?;
    let aad_len = backup.len() - r.remaining();
    let nonce: [u8; 12] = r.array()?;
    let sealed_len = r.u32()? as usize;
    let sealed = r.take(sealed_len)?;
    let signed_len = backup.len() - r.remaining();
    let signature: [u8; 64] = r.array()?;
    r.finish()?;
    Ok(Parts {
        version,
        written_at,
        certificate,
        aad: &backup[..aad_len],
        nonce,
        sealed,
        signed: &backup[..signed_len],
        signature,
    })
}

/// Check a backup's writer and signature without its key (what the login server does
/// before it stores one): the writer's certificate verifies against `trusted` as of the
/// time the backup was written, names `user`, and its key signed the backup; the time is
/// not more than a day past `now`.
pub fn verify_writer(
    backup: &[u8],
    user: &UserName,
    trusted: &TrustedAuthorities,
    now: UnixTime,
) -> Result<Signed, BackupError> {
    let p = parts(backup)?;
    check_writer(&p, user, trusted, now)
}

fn check_writer(
    p: &Parts<'_>,
    user: &UserName,
    trusted: &TrustedAuthorities,
    now: UnixTime,
) -> Result<Signed, BackupError> {
    if p.written_at.0 > now.0.saturating_add(MAX_AHEAD_S) {
        return Err(BackupError::FromTheFuture);
    }
    p.certificate
        .verify(trusted, p.written_at)
        .map_err(BackupError::Certificate)?;
    if p.certificate.user != *user {
        return Err(BackupError::WrongUser {
            expected: user.clone(),
            found: p.certificate.user.clone(),
        });
    }
    if !verify_signature(
        &p.certificate.signing_public,
        CONTEXT,
        p.signed,
        &p.signature,
    ) {
        return Err(BackupError::Signature);
    }
    Ok(Signed {
        version: p.version,
        written_at: p.written_at,
        writer: p.certificate.device,
    })
}

/// Open a backup of `user`'s list at `now`: check its writer and signature (as
/// [`verify_writer`]), that it is not older than `seen` (the highest version this device
/// saw; 0 for none), and decrypt it with `key`. The list comes back as `reader`'s (see
/// [`BuddyList::decode`]).
pub fn open(
    backup: &[u8],
    user: &UserName,
    key: &ListKey,
    trusted: &TrustedAuthorities,
    seen: u64,
    reader: DeviceId,
    now: UnixTime,
) -> Result<Opened, BackupError> {
    let p = parts(backup)?;
    let signed = check_writer(&p, user, trusted, now)?;
    if signed.version < seen {
        return Err(BackupError::RolledBack {
            seen,
            found: signed.version,
        });
    }
    let mut sealed = p.sealed.to_vec();
    let plain = key
        .cipher()
        .open_in_place(
            Nonce::assume_unique_for_key(p.nonce),
            Aad::from(p.aad),
            &mut sealed,
        )
        .map_err(|_| BackupError::Decrypt)?;
    let list = BuddyList::decode(plain, reader, now.0.saturating_mul(1000))?;
    Ok(Opened {
        version: signed.version,
        list,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::DeviceId;
    use crate::testkit::{TestNetwork, TEST_WALL};

    fn user(name: &str) -> UserName {
        UserName::parse(name).unwrap()
    }

    struct Setup {
        net: TestNetwork,
        list: BuddyList,
        key: ListKey,
        backup: Vec<u8>,
    }

    fn setup() -> Setup {
        let net = TestNetwork::new(7);
        let alice = net.identity("alice");
        let mut list = BuddyList::new(alice.certificate.device);
        list.set_contact(&user("bob"), true, 1_000).unwrap();
        list.set_nickname(&user("bob"), "Bobby", 1_001).unwrap();
        let key = ListKey([5; 32]);
        let mut rng = Rng::from_seed(1);
        let backup = seal(
            &list,
            3,
            &key,
            &alice.device,
            &alice.certificate,
            TEST_WALL,
            &mut rng,
        )
        .unwrap();
        Setup {
            net,
            list,
            key,
            backup,
        }
    }

    fn open_as_alice(s: &Setup, backup: &[u8], seen: u64) -> Result<Opened, BackupError> {
        open(
            backup,
            &user("alice"),
            &s.key,
            &s.net.trusted(),
            seen,
            DeviceId([9; 16]),
            TEST_WALL,
        )
    }

    #[test]
    fn a_new_device_gets_the_list_back() {
        let s = setup();
        let opened = open_as_alice(&s, &s.backup, 0).unwrap();
        assert_eq!(opened.version, 3);
        assert_eq!(opened.list.encode(), s.list.encode());
        assert_eq!(opened.list.device(), DeviceId([9; 16]));
        // The store sees no contact's name.
        assert!(!s.backup.windows(3).any(|w| w == b"bob"));
    }

    #[test]
    fn a_backup_from_the_future_or_outside_its_writers_certificate_is_refused() {
        let s = setup();
        let alice = s.net.identity("alice");
        let at = |t: u64| {
            seal(
                &s.list,
                4,
                &s.key,
                &alice.device,
                &alice.certificate,
                UnixTime(t),
                &mut Rng::from_seed(5),
            )
            .unwrap()
        };
        // Written two days ahead of the reader's clock.
        assert_eq!(
            open_as_alice(&s, &at(TEST_WALL.0 + 2 * 86_400), 0).unwrap_err(),
            BackupError::FromTheFuture
        );
        // Written after the writer's certificate expired (it is valid a day around TEST_WALL).
        let late = at(TEST_WALL.0 + 86_400 + 60);
        let got = open(
            &late,
            &user("alice"),
            &s.key,
            &s.net.trusted(),
            0,
            DeviceId([9; 16]),
            UnixTime(TEST_WALL.0 + 2 * 86_400),
        );
        assert!(matches!(got, Err(BackupError::Certificate(_))), "{got:?}");
        // What the login server checks without the key.
        let signed = verify_writer(&s.backup, &user("alice"), &s.net.trusted(), TEST_WALL).unwrap();
        assert_eq!(signed.version, 3);
        assert_eq!(signed.writer, alice.certificate.device);
    }

    #[test]
    fn an_edit_stamped_far_ahead_is_not_sealed() {
        let s = setup();
        let alice = s.net.identity("alice");
        let mut ahead = s.list.clone();
        // Made while the device's clock was a year ahead.
        let year_ms = 365 * 86_400 * 1000;
        ahead
            .set_contact(&user("carol"), true, TEST_WALL.0 * 1000 + year_ms)
            .unwrap();
        assert_eq!(
            seal(
                &ahead,
                4,
                &s.key,
                &alice.device,
                &alice.certificate,
                TEST_WALL,
                &mut Rng::from_seed(7),
            ),
            Err(BackupError::FromTheFuture)
        );
    }

    #[test]
    fn a_list_too_big_for_a_backup_is_an_error_not_a_cut() {
        let s = setup();
        let alice = s.net.identity("alice");
        let mut big = s.list.clone();
        for i in 0..2_000 {
            let u = user(&format!("contact{i}"));
            big.set_contact(&u, true, 2_000 + i).unwrap();
            big.set_nickname(&u, "a nickname of some length", 3_000 + i)
                .unwrap();
        }
        assert!(matches!(
            seal(
                &big,
                4,
                &s.key,
                &alice.device,
                &alice.certificate,
                TEST_WALL,
                &mut Rng::from_seed(6),
            ),
            Err(BackupError::TooBig(_))
        ));
    }

    #[test]
    fn every_altered_byte_is_refused() {
        let s = setup();
        for i in 0..s.backup.len() {
            let mut bad = s.backup.clone();
            bad[i] ^= 0x01;
            assert!(open_as_alice(&s, &bad, 0).is_err(), "byte {i} altered");
        }
        for n in 0..s.backup.len() {
            assert!(matches!(
                open_as_alice(&s, &s.backup[..n], 0),
                Err(BackupError::Malformed(_))
            ));
        }
    }

    #[test]
    fn rollback_wrong_key_and_foreign_writer_are_typed_errors() {
        let s = setup();
        assert_eq!(
            open_as_alice(&s, &s.backup, 4).unwrap_err(),
            BackupError::RolledBack { seen: 4, found: 3 }
        );
        assert!(open_as_alice(&s, &s.backup, 3).is_ok());
        let other = Setup {
            key: ListKey([6; 32]),
            ..setup()
        };
        assert_eq!(
            open_as_alice(&other, &s.backup, 0).unwrap_err(),
            BackupError::Decrypt
        );
        // Mallory signs a backup of his own and passes it off as alice's.
        let mallory = s.net.identity("mallory");
        let forged = seal(
            &s.list,
            9,
            &s.key,
            &mallory.device,
            &mallory.certificate,
            TEST_WALL,
            &mut Rng::from_seed(2),
        )
        .unwrap();
        assert!(matches!(
            open_as_alice(&s, &forged, 0),
            Err(BackupError::WrongUser { .. })
        ));
        // A certificate from an authority nobody trusts.
        let elsewhere = TestNetwork::new(8).identity("alice");
        let foreign = seal(
            &s.list,
            9,
            &s.key,
            &elsewhere.device,
            &elsewhere.certificate,
            TEST_WALL,
            &mut Rng::from_seed(3),
        )
        .unwrap();
        assert!(matches!(
            open_as_alice(&s, &foreign, 0),
            Err(BackupError::Certificate(_))
        ));
    }
}
