//! Chat: end-to-end encrypted messages between devices, shown once and in the same order on
//! every device.
//!
//! - [`keys`]: a device's published chat keys (its Olm identity and prekey, signed by its
//!   certified device key).
//! - [`channel`]: the end-to-end channels (Olm from `vodozemac`: X3DH, then the Double
//!   Ratchet), one per pair of devices; the [`Envelope`] super nodes carry and store.
//! - [`item`]: what a message says once decrypted (text, edit, deletion, receipt, typing,
//!   group changes), with its limits.
//! - [`log`]: a conversation's history: causal order, exactly once, membership.

pub mod channel;
pub mod item;
pub mod keys;
pub mod log;

pub use channel::{Channels, ChatError, Envelope, Opened};
pub use item::{Body, ConversationId, Item, MessageId, ReceiptKind, Target};
pub use keys::{DeviceKeys, KeysError};
pub use log::{Conversation, Entry, Inserted, LogError, Position};
