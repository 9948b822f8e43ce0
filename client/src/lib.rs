//! # natter: peer-to-peer calls for Rust applications
//!
//! One [`Client`] is one user on one device. Build it from the network file the login server
//! wrote and a data directory, log in (the login server certifies the device), start it (it
//! joins the network through super nodes, in the background), then call people by name and
//! read what happens from its [`Events`].
//!
//! ```
//! # let net = natter_fixtures::TestNet::start();
//! # let network_file = net.network_path();
//! # let dir = tempfile::tempdir()?;
//! # natter_fixtures::register(&net.network(), "alice", "alice's password");
//! # let bob = net.client("bob");
//! # natter_fixtures::answer_calls(&bob);
//! use std::time::Duration;
//! use natter::{Audio, Client, Event, Network};
//!
//! let alice = Client::builder(Network::from_file(network_file)?)
//!     .data_dir(dir.path())
//!     .build()?;
//! alice.login("alice", Some("alice's password"))?; // later: None renews without it
//! alice.start()?;
//! # net.wait_joined(&alice);
//! let call = alice.call("bob", Audio::tone())?;
//! while let Ok(event) = alice.events().recv_timeout(Duration::from_secs(10)) {
//!     println!("{event}"); // in words: "call 1: ringing on device 5c1d9e0a2b7f", ...
//!     match event {
//!         Event::CallConnected { .. } => call.hang_up()?,
//!         Event::CallEnded { reason, .. } => {
//!             println!("ended: {reason}"); // "ended: hung up"
//!             break;
//!         }
//!         _ => {}
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! What there is:
//!
//! | | |
//! |---|---|
//! | [`Network`] | the network file: login server, authority keys, bootstrap super nodes |
//! | [`Client`], [`ClientBuilder`] | options; [`Client::register`], [`Client::login`], [`Client::start`], [`Client::stop`], [`Client::search`], [`Client::call`], [`Client::state`], [`Client::status`] |
//! | [`Call`] | answer, decline, hang up, hold, resume, mute, [`CallStats`], application PCM |
//! | [`Audio`] | a call's audio: devices, WAV files, a tone, silence, or the application's PCM |
//! | [`Event`], [`Events`] | what happened, in a queue: blocking, with a timeout, a file descriptor, or a `Stream` (feature `async`) |
//! | errors | one enum per operation: [`BuildError`], [`RegisterError`], [`LoginError`], [`StartError`], [`CallError`], [`SearchError`], [`PcmError`] |
//!
//! The C ABI (`libnatter`, `natter.h`) and the `natter` program are thin layers over this
//! crate.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod audio;
mod bind;
mod call;
mod chat;
mod client;
mod contacts;
mod credentials;
mod error;
mod events;
mod network;
mod presence;
mod status;
mod types;
mod worker;

pub use audio::{
    audio_devices, Audio, AudioConfig, AudioDevice, AudioInput, AudioOutput, FRAME_SAMPLES,
    SAMPLE_RATE,
};
pub use call::Call;
pub use chat::{ChatMessage, MessageStatus, MAX_MESSAGE_TEXT, MAX_PAGE};
pub use client::{AccountDevice, Client, ClientBuilder, LoginInfo, Role, State};
pub use contacts::{Contact, ContactsSync, CONTACTS_PULL_EVERY};
pub use credentials::{Credentials, MAX_CREDENTIALS_LEN};
pub use error::{
    AccountError, BuildError, CallError, ChatError, ContactsError, CredentialsError, LoginError,
    PcmError, RegisterError, SearchError, ServerError, StartError, StopError,
};
#[cfg(feature = "async")]
pub use events::EventStream;
pub use events::{AudioError, Event, Events, MAX_QUEUED};
pub use network::{Network, NetworkError};
pub use presence::{Availability, Presence, PresenceError, MAX_MOOD};
pub use status::{IndexStatus, MailboxStatus, NodeStatus, RelayStatus};
pub use types::{
    AudioStats, CallId, CallState, CallStats, DeviceRecord, EndReason, Found, NodeRole, PathInfo,
    PathReason, Refusal, RequestId, SearchId, SearchOutcome,
};

pub use natter_core::call::PathKind;
pub use natter_core::chat::MessageId;
pub use natter_core::contacts::{BackupError, ListError};
pub use natter_core::crypto::{DeviceId, UserName, UserNameError};
pub use natter_core::login::proto::Version;
pub use natter_core::overlay::{FallbackPorts, Filtering, LinkTransport, NatType};
pub use natter_media::audio::processing::VoiceProcessing;
pub use natter_transport::login::client::PasswordNeeded;

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn the_main_types_are_send_and_sync() {
        send_sync::<Client>();
        send_sync::<Call>();
        send_sync::<Events>();
        send_sync::<Event>();
    }

    #[test]
    fn an_event_stays_small() {
        let size = std::mem::size_of::<Event>();
        assert!(size <= 96, "Event is {size} bytes: box the large variants");
    }
}
