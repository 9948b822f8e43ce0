//! The list key's envelope: the [`ListKey`] wrapped under a key stretched from the user's
//! password, stored next to the backup, so that a new install that knows only the password
//! gets the list back with none of the user's other devices online.
//!
//! ```text
//! "NBK1" ‖ 16-byte salt ‖ u32 memory KiB ‖ u32 iterations ‖ 12-byte nonce ‖
//! 48 bytes: the list key sealed with ChaCha20-Poly1305 (the tag included)
//! ```
//!
//! The wrapping key is Argon2id of the password, with the envelope's own random salt and
//! parameters (carried in the envelope, bounded when read), and the user's name and the
//! header as associated data: an envelope cannot be moved to another account, and its
//! parameters cannot be lowered without the seal breaking. A password change wraps the same
//! list key under the new password ([`wrap`] again): every backup stays readable.
//!
//! **Threat model.** Whoever holds an envelope and a backup, without the password (a leaked
//! database, a stolen backup of the login server), must guess the password through Argon2id
//! for each guess (64 MiB and 3 passes by default; a reader refuses less than
//! [`StretchParams::FLOOR`], so a forged cheap envelope cannot make guessing cheaper than
//! the server's own password hash). The login protocol sends the password to the login
//! server at every login, so a login server *operator* who records passwords as they arrive
//! can unwrap the list key: against that operator the list is protected only once logins
//! stop sending the password itself (a client-side stretched key instead, or OPAQUE), which
//! they do not yet. A password change leaves the old envelope in place until a device wraps
//! the key again under the new password and stores it.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

use super::ListKey;
use crate::crypto::UserName;
use crate::rng::Rng;
use crate::wire::{DecodeError, Reader};

const MAGIC: &[u8; 4] = b"NBK1";
/// Bytes in an envelope.
pub const ENVELOPE_LEN: usize = 4 + 16 + 4 + 4 + 12 + 32 + 16;

/// How hard the wrapping key is to guess: Argon2id's memory and passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StretchParams {
    /// Memory, KiB.
    pub memory_kib: u32,
    /// Passes over it.
    pub iterations: u32,
}

impl StretchParams {
    /// The defaults: 64 MiB and 3 passes (RFC 9106's second recommended option), about
    /// 0.2 s on a laptop core.
    pub const DEFAULT: StretchParams = StretchParams {
        memory_kib: 64 * 1024,
        iterations: 3,
    };
    /// The most an envelope may ask for: 256 MiB and 8 passes (a hostile envelope must not
    /// exhaust a phone's memory).
    pub const MAX: StretchParams = StretchParams {
        memory_kib: 256 * 1024,
        iterations: 8,
    };
    /// The least an application should accept ([`unwrap`]'s `floor`): OWASP's minimum for
    /// Argon2id, 19 MiB and 2 passes, what the login server hashes passwords with. An
    /// envelope made cheaper would make guessing the password offline cheaper than from the
    /// server's own hash.
    pub const FLOOR: StretchParams = StretchParams {
        memory_kib: 19 * 1024,
        iterations: 2,
    };
    /// The least Argon2id itself takes: for tests only (pass it as the floor to accept it).
    pub const MIN: StretchParams = StretchParams {
        memory_kib: 8,
        iterations: 1,
    };
}

/// Why an envelope did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Not an envelope, or its parameters are out of bounds.
    #[error("malformed list-key envelope: {0}")]
    Malformed(#[from] DecodeError),
    /// Wrong password, another account's envelope, or altered.
    #[error("the list-key envelope does not open with this password")]
    WrongPassword,
}

fn wrapping_key(
    password: &str,
    salt: &[u8; 16],
    params: StretchParams,
) -> Result<LessSafeKey, EnvelopeError> {
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(params.memory_kib, params.iterations, 1, Some(32))
            .map_err(|_| DecodeError::Invalid("stretch parameters"))?,
    );
    let mut key = [0u8; 32];
    argon
        .hash_password_into(password.as_bytes(), salt, &mut key)
        .map_err(|_| DecodeError::Invalid("stretch parameters"))?;
    Ok(LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, &key).expect("a 32-byte ChaCha20 key"),
    ))
}

fn aad(user: &UserName, header: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(header.len() + 33);
    a.push(user.as_str().len() as u8);
    a.extend_from_slice(user.as_str().as_bytes());
    a.extend_from_slice(header);
    a
}

/// Wrap `key` for `user` under `password`. Costs one Argon2id run of `params` (run it off
/// any thread that must stay responsive).
pub fn wrap(
    key: &ListKey,
    user: &UserName,
    password: &str,
    params: StretchParams,
    rng: &mut Rng,
) -> Result<Vec<u8>, EnvelopeError> {
    let mut salt = [0u8; 16];
    rng.fill(&mut salt);
    let mut nonce = [0u8; 12];
    rng.fill(&mut nonce);
    let mut out = Vec::with_capacity(ENVELOPE_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&salt);
    out.extend_from_slice(&params.memory_kib.to_be_bytes());
    out.extend_from_slice(&params.iterations.to_be_bytes());
    out.extend_from_slice(&nonce);
    let mut sealed = key.0.to_vec();
    let tag = wrapping_key(password, &salt, params)?
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(user, &out)),
            &mut sealed,
        )
        .expect("32 bytes seal");
    out.extend_from_slice(&sealed);
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// The stretching an envelope asks for, if it is a well-formed envelope asking for at least
/// `floor` and at most [`StretchParams::MAX`] (what a store checks before keeping one:
/// nothing is unwrapped).
pub fn check(envelope: &[u8], floor: StretchParams) -> Result<StretchParams, EnvelopeError> {
    Ok(parse(envelope, floor)?.params)
}

struct Parsed<'a> {
    salt: [u8; 16],
    params: StretchParams,
    nonce: [u8; 12],
    header: &'a [u8],
    sealed: [u8; 48],
}

fn parse(envelope: &[u8], floor: StretchParams) -> Result<Parsed<'_>, EnvelopeError> {
    let mut r = Reader::new(envelope);
    if r.array::<4>()? != *MAGIC {
        return Err(DecodeError::Invalid("list-key envelope").into());
    }
    let salt: [u8; 16] = r.array()?;
    let params = StretchParams {
        memory_kib: r.u32()?,
        iterations: r.u32()?,
    };
    let (lo, hi) = (floor, StretchParams::MAX);
    if !(lo.memory_kib..=hi.memory_kib).contains(&params.memory_kib)
        || !(lo.iterations..=hi.iterations).contains(&params.iterations)
    {
        return Err(DecodeError::Invalid("stretch parameters").into());
    }
    let nonce: [u8; 12] = r.array()?;
    let header_len = envelope.len() - r.remaining();
    let sealed: [u8; 48] = r.array()?;
    r.finish()?;
    Ok(Parsed {
        salt,
        params,
        nonce,
        header: &envelope[..header_len],
        sealed,
    })
}

/// Unwrap the list key from `envelope` for `user` with `password`, if its stretching is at
/// least `floor` ([`StretchParams::FLOOR`]) and at most [`StretchParams::MAX`].
pub fn unwrap(
    envelope: &[u8],
    user: &UserName,
    password: &str,
    floor: StretchParams,
) -> Result<ListKey, EnvelopeError> {
    let Parsed {
        salt,
        params,
        nonce,
        header,
        mut sealed,
    } = parse(envelope, floor)?;
    let plain = wrapping_key(password, &salt, params)?
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(user, header)),
            &mut sealed,
        )
        .map_err(|_| EnvelopeError::WrongPassword)?;
    let mut key = [0u8; 32];
    key.copy_from_slice(plain);
    Ok(ListKey(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: StretchParams = StretchParams::MIN;

    fn alice() -> UserName {
        UserName::parse("alice").unwrap()
    }

    #[test]
    fn a_password_change_keeps_the_key() {
        let key = ListKey([4; 32]);
        let mut rng = Rng::from_seed(1);
        let old = wrap(&key, &alice(), "old secret", CHEAP, &mut rng).unwrap();
        assert_eq!(old.len(), ENVELOPE_LEN);
        assert_eq!(
            unwrap(&old, &alice(), "old secret", CHEAP).unwrap().0,
            key.0
        );
        let new = wrap(&key, &alice(), "new secret", CHEAP, &mut rng).unwrap();
        assert_eq!(
            unwrap(&new, &alice(), "new secret", CHEAP).unwrap().0,
            key.0
        );
        assert_eq!(
            unwrap(&new, &alice(), "old secret", CHEAP).unwrap_err(),
            EnvelopeError::WrongPassword
        );
    }

    #[test]
    fn another_account_altered_bytes_and_hostile_parameters_are_refused() {
        let key = ListKey([4; 32]);
        let env = wrap(&key, &alice(), "pw", CHEAP, &mut Rng::from_seed(2)).unwrap();
        let bob = UserName::parse("bob").unwrap();
        assert_eq!(
            unwrap(&env, &bob, "pw", CHEAP).unwrap_err(),
            EnvelopeError::WrongPassword
        );
        for i in 0..env.len() {
            let mut bad = env.clone();
            bad[i] ^= 0x01;
            assert!(unwrap(&bad, &alice(), "pw", CHEAP).is_err(), "byte {i}");
        }
        for n in 0..env.len() {
            assert!(matches!(
                unwrap(&env[..n], &alice(), "pw", CHEAP),
                Err(EnvelopeError::Malformed(_))
            ));
        }
        // Below the floor an application sets: refused before any work.
        assert!(matches!(
            unwrap(&env, &alice(), "pw", StretchParams::FLOOR),
            Err(EnvelopeError::Malformed(_))
        ));
        // Asking for 4 GiB is refused before any work.
        let mut greedy = env.clone();
        greedy[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            unwrap(&greedy, &alice(), "pw", CHEAP),
            Err(EnvelopeError::Malformed(_))
        ));
    }
}
