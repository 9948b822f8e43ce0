//! # natter-server
//!
//! Natter's login server: the network's one central piece. It keeps user names unique, checks
//! passwords (Argon2id), certifies each device's keys, signs revocation lists and tells
//! outdated clients to upgrade. After login nothing needs it.
//!
//! It lives outside the client library: applications (and `libnatter`) link only the login
//! client (`natter-transport::login`), never the server, its stores or their database clients.
//!
//! * [`machine`]: the sans-IO protocol machine (policy, throttling, certificate issuance);
//!   storage and hashing go out as jobs. Like every Natter machine it performs no I/O.
//! * [`password`]: Argon2id hashing.
//! * [`store`]: the account stores: SQLite (one server) and PostgreSQL (several behind one
//!   name).
//! * [`jobs`]: runs the machine's jobs against a store on worker threads.
//! * [`runtime`]: [`LoginServerHandle::start`]: a mio loop that terminates TLS 1.3 and drives
//!   the machine, with worker threads for Argon2id and the store.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod jobs;
pub mod machine;
pub mod password;
pub mod runtime;
pub mod store;

pub use runtime::{LoginServerHandle, LoginServerOptions, StartError};
