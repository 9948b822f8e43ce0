//! Identities and the cryptography of sessions.
//!
//! * Device keys, user names, the login authority and certificates ([`DeviceIdentity`],
//!   [`UserName`], [`Authority`], [`Certificate`], [`TrustedAuthorities`]).
//! * The Noise XX / IK handshake through `snow`, with the certificate bound to the static key
//!   it authenticated ([`Handshake`], [`LocalIdentity`], [`PeerInfo`]).
//! * The data plane: ChaCha20-Poly1305 under explicit counters, key update, and the RFC 6479
//!   replay window ([`Session`], [`ReplayWindow`]).

mod credentials;
mod handshake;
mod identity;
mod replay;
mod session;

pub use credentials::{CredentialsError, DeviceCredentials, MAX_CREDENTIALS_LEN};
pub use handshake::{
    reset_token, Capabilities, Established, Handshake, HandshakeError, HandshakePayload,
    InitMessage, LocalIdentity, PeerInfo, Step, RESET_TOKEN_LEN,
};
pub use identity::{
    dh_mac, dh_public_of, verify_dh_proof, verify_signature, Authority, AuthorityKeyId, CertError,
    Certificate, DeviceId, DeviceIdentity, TrustedAuthorities, UnixTime, UserName, UserNameError,
    MAX_CERT_LEN, RING_SALT_LEN,
};
pub use replay::{ReplayError, ReplayWindow, WINDOW};
pub use session::{
    OpenError, Opened, SealError, Session, SessionStats, MAX_GENERATION_SKIP, REKEY_AFTER,
};
