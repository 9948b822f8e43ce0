//! The login server's runtime and the client side of logging in, over TLS 1.3.
//!
//! * [`server`]: `LoginServerHandle::start` runs a login server: a mio loop that terminates TLS
//!   and drives the sans-IO [`natter_core::login::server::LoginServer`], with worker threads for
//!   Argon2id and the account store so hashing never stalls the I/O thread.
//! * [`client`]: a blocking client that connects, checks the pin, and runs login operations.
//! * [`network`]: the network file. [`tls`]: certificates and pinning. [`jobs`]: the workers'
//!   job runner. [`files`]: owner-only files for secrets.

pub mod client;
pub mod files;
pub mod jobs;
pub mod network;
pub mod server;
pub mod tls;
