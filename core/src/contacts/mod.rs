//! Contacts: the buddy list that follows the user to every device.
//!
//! - [`list`]: the buddy list as a state that merges (contacts, nicknames, groups, blocked
//!   users), edited on any device, even offline, and encoded canonically for backups.

pub mod list;

pub use list::{BuddyList, Entry, ListError, Lww, Stamp};
