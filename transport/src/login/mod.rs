//! The client side of logging in, over TLS 1.3 (the login server itself is `natter-server`).
//!
//! * [`client`]: a blocking client that connects, checks the pin, and runs login operations;
//!   the device's stored credentials; background certificate renewal and revocation fetching.
//! * [`network`]: the network file. [`tls`]: the client's TLS configuration and pinning.
//!   [`files`]: owner-only files for secrets.

pub mod client;
pub mod files;
pub mod network;
pub mod tls;
