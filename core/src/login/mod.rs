//! The login protocol, client side: registration, authentication, device certification,
//! version check. The server's machine is in `natter-server`.
//!
//! * [`proto`]: the messages on the wire (TLS 1.3, u16 frames).
//! * [`client`]: the client's machine (version check, operations, certificate checks).

pub mod client;
pub mod proto;
