//! The login protocol: registration, authentication, device certification, version check.
//!
//! * [`proto`]: the messages on the wire (TLS 1.3, u16 frames).
//! * [`server`]: the login server's machine (policy, throttling, certificate issuance); storage
//!   and hashing go out as jobs for the runtime's worker threads.
//! * [`client`]: the client's machine (version check, operations, certificate checks).
//! * [`password`]: Argon2id hashing.

pub mod client;
pub mod password;
pub mod proto;
pub mod server;
