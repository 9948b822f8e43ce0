//! Password hashing with Argon2id.
//!
//! Hashes are PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`) that carry their own
//! parameters, so the parameters can be raised later: [`needs_rehash`] tells the server to
//! re-hash on the next successful login. The defaults are OWASP's minimum recommendation for
//! Argon2id: 19 MiB of memory, 2 passes, 1 lane.
//!
//! Hashing is deliberately slow (tens of milliseconds): the login server runs it on worker
//! threads, never on its I/O thread. This module only computes; the salt comes from the
//! caller's randomness.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for HashParams {
    /// OWASP's minimum for Argon2id: m = 19 MiB, t = 2, p = 1.
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// Why hashing failed (bad parameters or a malformed stored hash).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

fn argon2(p: HashParams) -> Result<Argon2<'static>, HashError> {
    let params = Params::new(p.memory_kib, p.iterations, p.parallelism, None)
        .map_err(|e| HashError(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hash `password` with a 16-byte `salt` (from the caller's CSPRNG).
pub fn hash(password: &str, salt: [u8; 16], params: HashParams) -> Result<String, HashError> {
    let salt = SaltString::encode_b64(&salt).map_err(|e| HashError(e.to_string()))?;
    argon2(params)?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Check `password` against a stored PHC string (with the parameters stored in it).
/// A malformed stored hash is an error, a wrong password is `Ok(false)`.
pub fn verify(password: &str, stored: &str) -> Result<bool, HashError> {
    let parsed = PasswordHash::new(stored).map_err(|e| HashError(e.to_string()))?;
    match Argon2::default().verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(e) => Err(HashError(e.to_string())),
    }
}

/// True when `stored` was made with weaker parameters than `params` (re-hash after a
/// successful login).
pub fn needs_rehash(stored: &str, params: HashParams) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return true;
    };
    let Ok(current) = Params::try_from(&parsed) else {
        return true;
    };
    parsed.algorithm.as_str() != "argon2id"
        || current.m_cost() < params.memory_kib
        || current.t_cost() < params.iterations
        || current.p_cost() < params.parallelism
}

/// A hash of a password nobody has, to verify against when the account does not exist, so
/// "unknown user" costs the same time as "wrong password".
pub fn dummy_hash(params: HashParams) -> String {
    hash("natter-no-such-account", [0x5a; 16], params).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> HashParams {
        HashParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }

    #[test]
    fn hash_verify_and_params_are_stored() {
        let h = hash("correct horse", [1; 16], cheap()).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{h}");
        assert!(verify("correct horse", &h).unwrap());
        assert!(!verify("correct horsE", &h).unwrap());
        assert!(verify("x", "not a hash").is_err());
        assert!(needs_rehash(&h, HashParams::default()));
        assert!(!needs_rehash(&h, cheap()));
    }

    #[test]
    fn default_is_owasp_minimum() {
        let h = hash("pw-for-default", [2; 16], HashParams::default()).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(!needs_rehash(&h, HashParams::default()));
    }
}
