//! This user's presence as this device sets it: how available they are, a mood, and
//! "away" after the user has been idle for a while.
//!
//! What it does on this device now: "do not disturb" refuses calls with Busy (the caller hears
//! "busy"; [`Event::MissedBusy`](crate::Event::MissedBusy) reports each), and "invisible"
//! publishes this device as offline in the global index, so searches (and callers) find the
//! user offline, while this device can still call out. Telling contacts (push within 2 s,
//! combined across devices) is the part of issue 18 still to come.

use std::fmt;
use std::time::Duration;

/// Longest mood text, bytes of UTF-8.
pub const MAX_MOOD: usize = 256;

/// How available a user is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Availability {
    /// Online: calls ring.
    #[default]
    Online,
    /// Away (set, or after the user was idle for [`Client::set_away_after`](crate::Client::set_away_after)):
    /// calls ring.
    Away,
    /// Do not disturb: calls are refused with Busy and do not ring.
    DoNotDisturb,
    /// Looks offline to everyone (search results included), yet can call.
    Invisible,
    /// Not online (how others look when no device of theirs is; not settable: stop the
    /// client, or be invisible).
    Offline,
}

impl Availability {
    /// The name the JSON interface and `natter client` use: `online`, `away`, `dnd`,
    /// `invisible`, `offline`.
    pub fn name(self) -> &'static str {
        match self {
            Availability::Online => "online",
            Availability::Away => "away",
            Availability::DoNotDisturb => "dnd",
            Availability::Invisible => "invisible",
            Availability::Offline => "offline",
        }
    }

    /// The value of a [`Availability::name`] (`do-not-disturb` and `busy` read as `dnd`).
    pub fn from_name(name: &str) -> Option<Availability> {
        Some(match name.to_ascii_lowercase().as_str() {
            "online" | "available" => Availability::Online,
            "away" => Availability::Away,
            "dnd" | "do-not-disturb" | "do_not_disturb" | "busy" => Availability::DoNotDisturb,
            "invisible" => Availability::Invisible,
            "offline" => Availability::Offline,
            _ => return None,
        })
    }
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Availability::Online => "online",
            Availability::Away => "away",
            Availability::DoNotDisturb => "do not disturb",
            Availability::Invisible => "invisible",
            Availability::Offline => "offline",
        })
    }
}

/// A user's presence: availability and mood.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Presence {
    /// How available.
    pub availability: Availability,
    /// A mood text (at most [`MAX_MOOD`] bytes; empty: none).
    pub mood: String,
}

impl fmt::Display for Presence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mood.is_empty() {
            true => write!(f, "{}", self.availability),
            false => write!(f, "{} ({:?})", self.availability, self.mood),
        }
    }
}

/// Why [`Client::set_presence`](crate::Client::set_presence) refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PresenceError {
    /// The mood is longer than [`MAX_MOOD`] bytes.
    #[error("mood too long: {0} bytes > {MAX_MOOD}")]
    MoodTooLong(usize),
    /// Offline is not set: stop the client, or be invisible.
    #[error("offline is not set: stop the client, or be invisible")]
    Offline,
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
}

/// What the user set, and how idle they are.
#[derive(Debug, Clone, Default)]
pub(crate) struct PresenceState {
    pub set: Presence,
    pub away_after: Option<Duration>,
    pub idle: Duration,
}

impl PresenceState {
    /// The presence in effect: "online" turns "away" once the user has been idle long enough.
    pub fn effective(&self) -> Presence {
        let idle_away = self.away_after.is_some_and(|after| self.idle >= after);
        let mut p = self.set.clone();
        if p.availability == Availability::Online && idle_away {
            p.availability = Availability::Away;
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_turns_away_when_idle_and_back() {
        let mut s = PresenceState::default();
        assert_eq!(s.effective().availability, Availability::Online);
        s.away_after = Some(Duration::from_secs(300));
        s.idle = Duration::from_secs(299);
        assert_eq!(s.effective().availability, Availability::Online);
        s.idle = Duration::from_secs(300);
        assert_eq!(s.effective().availability, Availability::Away);
        // Only "online" turns away: do not disturb stays.
        s.set.availability = Availability::DoNotDisturb;
        assert_eq!(s.effective().availability, Availability::DoNotDisturb);
        s.set.availability = Availability::Online;
        s.idle = Duration::ZERO;
        assert_eq!(s.effective().availability, Availability::Online);
    }

    #[test]
    fn names_read_back() {
        for a in [
            Availability::Online,
            Availability::Away,
            Availability::DoNotDisturb,
            Availability::Invisible,
            Availability::Offline,
        ] {
            assert_eq!(Availability::from_name(a.name()), Some(a));
        }
        assert_eq!(
            Availability::from_name("Busy"),
            Some(Availability::DoNotDisturb)
        );
        assert_eq!(Availability::from_name("asleep"), None);
    }
}
