//! Contacts: the buddy list that follows the user to every device.
//!
//! - [`list`]: the buddy list as a state that merges (contacts, nicknames, groups, blocked
//!   users), edited on any device, even offline, and encoded canonically for backups.
//! - [`backup`]: the list sealed for the network (encrypted, signed, versioned).
//! - [`envelope`]: the backups' key wrapped under the password, for a new install.

pub mod backup;
pub mod envelope;
pub mod list;

pub use backup::{BackupError, ListKey, Opened};
pub use envelope::{EnvelopeError, StretchParams};
pub use list::{BuddyList, Entry, ListError, Lww, Stamp};
