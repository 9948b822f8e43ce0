//! The data plane of an established peer session: sealing and opening datagrams.
//!
//! After the Noise handshake, each direction has its own 32-byte key. Datagrams are sealed with
//! ChaCha20-Poly1305 under an **explicit 64-bit counter** carried in the clear header (UDP loses
//! and reorders, so the nonce cannot be implicit), and the header is the associated data.
//!
//! * **Replay protection**: a [`ReplayWindow`] of 4032 packets; reordered packets inside it
//!   decrypt, replayed or older ones are dropped and counted. Authentication happens *before*
//!   the window is updated, so a forged or corrupted packet changes no state at all.
//! * **Short media envelope**: media to a peer that reads it carries only the counter's low
//!   32 bits; the receiver completes the generation from the key phase bit (current, else the
//!   next or the previous one, the likelier first, at most two AEAD tries).
//! * **Key update (rekeying)**: the counter's high 32 bits are the key *generation*. Generation
//!   `g + 1`'s key is `BLAKE2s("natter-key-update" ‖ key_g)` and the old key is erased, which
//!   gives forward secrecy inside a long session. A sender moves to the next generation after
//!   2^32 packets (counter exhaustion) or [`REKEY_AFTER`] (time), by jumping its counter to the
//!   next generation's first value; the receiver derives the next key on demand, at most
//!   [`MAX_GENERATION_SKIP`] generations ahead, and keeps the previous one for stragglers. The
//!   header's key-phase bit must equal the generation's low bit (a cheap sanity check, as in
//!   QUIC). A session is exhausted, and refuses to seal, only when all 2^32 generations are used.

use std::time::{Duration, Instant};

use blake2::{Blake2s256, Digest};
use bytes::{BufMut, BytesMut};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

use crate::crypto::{ReplayError, ReplayWindow, WINDOW};
use crate::wire::packet::{Channel, DataHeader, SessionIndex, DATA_HEADER_LEN, TAG_LEN};

/// The low half of a counter: what a short media header carries.
const LOW_MASK: u64 = (1 << GENERATION_SHIFT) - 1;

/// Move to a new key generation after this long, even when few packets were sent.
pub const REKEY_AFTER: Duration = Duration::from_secs(120);
/// How many generations ahead of the current one a receiver will derive keys for.
pub const MAX_GENERATION_SKIP: u64 = 4;
const GENERATION_SHIFT: u32 = 32;

/// Why a datagram could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Every counter of every generation has been used; a new handshake is required.
    #[error("session exhausted: a new handshake is required")]
    Exhausted,
}

/// Why a datagram could not be opened. None of these change the session's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Refused by the replay window.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// The tag did not verify (forged, corrupted, or wrong key).
    #[error("authentication failed")]
    Authentication,
    /// The counter names a generation this session has no key for.
    #[error("unknown key generation")]
    Generation,
}

/// A data envelope that opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// The full counter it was sealed under (a short header's, completed).
    pub counter: u64,
    /// No packet with a higher counter had been received: only such a packet may move a
    /// session's path (a delayed one must not).
    pub newest: bool,
}

/// Counters of what a session has done, for statistics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Datagrams sealed.
    pub sealed: u64,
    /// Datagrams opened successfully.
    pub opened: u64,
    /// Dropped: counter already seen.
    pub replayed: u64,
    /// Dropped: counter older than the window.
    pub too_old: u64,
    /// Dropped: authentication failed.
    pub auth_failed: u64,
    /// Dropped: unknown key generation.
    pub bad_generation: u64,
    /// Key generations the sender moved through.
    pub send_rekeys: u64,
}

struct GenKey {
    generation: u64,
    raw: [u8; 32],
    cipher: LessSafeKey,
}

impl GenKey {
    fn new(generation: u64, raw: [u8; 32]) -> Self {
        Self {
            generation,
            // A 32-byte key is always valid for ChaCha20-Poly1305.
            cipher: LessSafeKey::new(
                UnboundKey::new(&CHACHA20_POLY1305, &raw).expect("32-byte ChaCha20 key"),
            ),
            raw,
        }
    }

    fn open(&self, counter: u64, aad: &[u8], buf: &mut [u8]) -> bool {
        self.cipher
            .open_in_place(nonce(counter), Aad::from(aad), buf)
            .is_ok()
    }

    fn next(&self) -> Self {
        let mut h = Blake2s256::new();
        h.update(b"natter-key-update");
        h.update(self.raw);
        Self::new(self.generation + 1, h.finalize().into())
    }
}

impl Drop for GenKey {
    fn drop(&mut self) {
        // Best-effort erasure of the raw key (the cipher object keeps its own expanded copy).
        self.raw = [0; 32];
    }
}

/// The AEAD nonce: four zero bytes and the little-endian counter, as Noise does.
fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Sealing and opening state of one established session.
pub struct Session {
    local: SessionIndex,
    remote: SessionIndex,
    send: GenKey,
    send_counter: u64,
    send_generation_started: Instant,
    recv: GenKey,
    /// Replay window of the current receive generation.
    window: ReplayWindow,
    /// The previous generation's key and window, for packets still in flight across a key
    /// update.
    recv_previous: Option<(GenKey, ReplayWindow)>,
    /// Media goes in the short envelope (the peer reads it).
    short_media: bool,
    stats: SessionStats,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("send_counter", &self.send_counter)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session from the two directional keys produced by the handshake.
    ///
    /// `local` is the index peers put in packets to us, `remote` the one we put in packets to
    /// them.
    pub fn new(
        local: SessionIndex,
        remote: SessionIndex,
        send_key: [u8; 32],
        recv_key: [u8; 32],
        now: Instant,
    ) -> Self {
        Self {
            local,
            remote,
            send: GenKey::new(0, send_key),
            send_counter: 0,
            send_generation_started: now,
            recv: GenKey::new(0, recv_key),
            recv_previous: None,
            window: ReplayWindow::default(),
            short_media: false,
            stats: SessionStats::default(),
        }
    }

    /// Seal media in the short envelope from now on (see [`crate::wire::packet`]): only when
    /// the peer reads it (it announced [`crate::crypto::Capabilities::SHORT_MEDIA`]).
    pub fn set_short_media(&mut self, on: bool) {
        self.short_media = on;
    }

    /// Our index (packets to us carry it).
    pub fn local_index(&self) -> SessionIndex {
        self.local
    }

    /// The peer's index (packets we send carry it).
    pub fn remote_index(&self) -> SessionIndex {
        self.remote
    }

    /// What the session has counted.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// The next counter this session will use.
    pub fn send_counter(&self) -> u64 {
        self.send_counter
    }

    /// The full counters a header may stand for, most likely first: its own; for a short
    /// header, the low half completed with the current generation when the key phase matches
    /// it, else with the next one or, for a straggler, the previous one. A forged or
    /// corrupted packet fails authentication under each (at most two tries).
    fn candidates(&self, header: &DataHeader) -> ([u64; 2], usize) {
        if !header.short {
            return ([header.counter, 0], 1);
        }
        let low = header.counter & LOW_MASK;
        let current = self.recv.generation;
        if header.key_phase == (current & 1 == 1) {
            return ([current << GENERATION_SHIFT | low, 0], 1);
        }
        let next = (current + 1) << GENERATION_SHIFT | low;
        let previous = self
            .recv_previous
            .as_ref()
            .map(|(k, w)| (k.generation << GENERATION_SHIFT | low, w.highest()));
        match previous {
            // A straggler's counter lies within the previous generation's window; a new
            // generation's counters start from 0: the likelier one first.
            Some((prev, Some(highest))) if highest.saturating_sub(prev) < WINDOW => {
                ([prev, next], 2)
            }
            Some((prev, _)) => ([next, prev], 2),
            None => ([next, 0], 1),
        }
    }

    /// True when `counter` would be the newest this session has received (so a packet with it
    /// may move the path; an older, delayed packet must not).
    pub fn is_newest(&self, counter: u64) -> bool {
        let generation = counter >> GENERATION_SHIFT;
        generation > self.recv.generation
            || (generation == self.recv.generation
                && self.window.highest().is_none_or(|h| counter > h))
    }

    /// Seal `plaintext` as a data envelope on `channel` and append the datagram to `out`.
    pub fn seal(
        &mut self,
        now: Instant,
        channel: Channel,
        plaintext: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), SealError> {
        if self.send_counter == u64::MAX {
            return Err(SealError::Exhausted);
        }
        if now.saturating_duration_since(self.send_generation_started) >= REKEY_AFTER
            && self.send_counter >> GENERATION_SHIFT == self.send.generation
        {
            // Time-based key update: jump to the first counter of the next generation.
            let next = self.send.generation + 1;
            if next > u64::from(u32::MAX) {
                return Err(SealError::Exhausted);
            }
            self.send_counter = next << GENERATION_SHIFT;
        }
        let generation = self.send_counter >> GENERATION_SHIFT;
        if generation != self.send.generation {
            while self.send.generation < generation {
                self.send = self.send.next();
            }
            self.send_generation_started = now;
            self.stats.send_rekeys += 1;
        }
        let counter = self.send_counter;
        self.send_counter += 1;

        let header = DataHeader {
            channel,
            key_phase: generation & 1 == 1,
            receiver: self.remote,
            counter,
            short: channel == Channel::Media && self.short_media,
        };
        let mut aad = [0u8; DATA_HEADER_LEN];
        let aad_len = header.wire_len();
        header.encode(&mut &mut aad[..]);
        let aad = &aad[..aad_len];
        out.reserve(aad_len + plaintext.len() + TAG_LEN);
        out.put_slice(aad);
        let start = out.len();
        out.put_slice(plaintext);
        let tag = self
            .send
            .cipher
            .seal_in_place_separate_tag(nonce(counter), Aad::from(aad), &mut out[start..])
            .map_err(|_| SealError::Exhausted)?;
        out.put_slice(tag.as_ref());
        self.stats.sealed += 1;
        Ok(())
    }

    /// Authenticate and decrypt a data envelope addressed to this session, writing the
    /// plaintext into `plaintext` (cleared first). On error nothing changes but the counters.
    /// A short media header is tried under each full counter it may stand for. Returns the
    /// counter it opened under and whether it was the newest.
    pub fn open(
        &mut self,
        header: &DataHeader,
        ciphertext: &[u8],
        plaintext: &mut Vec<u8>,
    ) -> Result<Opened, OpenError> {
        let (candidates, n) = self.candidates(header);
        // The first guess's error stands unless another guess opens (a replay under one
        // counter says nothing about the other).
        let mut result = Err(OpenError::Authentication);
        for (i, counter) in candidates[..n].iter().enumerate() {
            // Judged before the packet commits, by the counter it authenticates under.
            let newest = self.is_newest(*counter);
            let attempt = self
                .open_inner(header, *counter, ciphertext, plaintext)
                .map(|()| Opened {
                    counter: *counter,
                    newest,
                });
            if i == 0 || attempt.is_ok() {
                result = attempt;
            }
            if result.is_ok() {
                break;
            }
        }
        match result {
            Ok(_) => self.stats.opened += 1,
            Err(OpenError::Replay(ReplayError::Replayed)) => self.stats.replayed += 1,
            Err(OpenError::Replay(ReplayError::TooOld)) => self.stats.too_old += 1,
            Err(OpenError::Authentication) => self.stats.auth_failed += 1,
            Err(OpenError::Generation) => self.stats.bad_generation += 1,
        }
        result
    }

    /// Opens under the full counter `counter` (the header's own, or one a short header may
    /// stand for).
    fn open_inner(
        &mut self,
        header: &DataHeader,
        counter: u64,
        ciphertext: &[u8],
        plaintext: &mut Vec<u8>,
    ) -> Result<(), OpenError> {
        let Some(body_len) = ciphertext.len().checked_sub(TAG_LEN) else {
            return Err(OpenError::Authentication);
        };
        let generation = counter >> GENERATION_SHIFT;
        if header.key_phase != (generation & 1 == 1) {
            return Err(OpenError::Generation);
        }
        let mut aad = [0u8; DATA_HEADER_LEN];
        header.encode(&mut &mut aad[..]);
        let aad = &aad[..header.wire_len()];
        let authentic = |key: &GenKey, buf: &mut Vec<u8>| {
            buf.clear();
            buf.extend_from_slice(ciphertext);
            if key.open(counter, aad, buf) {
                buf.truncate(body_len);
                Ok(())
            } else {
                Err(OpenError::Authentication)
            }
        };

        let current = self.recv.generation;
        if generation == current {
            self.window.check(counter)?;
            authentic(&self.recv, plaintext)?;
            self.window.record(counter);
        } else if generation < current {
            let (key, window) = self
                .recv_previous
                .as_mut()
                .filter(|(k, _)| k.generation == generation)
                .ok_or(OpenError::Generation)?;
            window.check(counter)?;
            authentic(key, plaintext)?;
            window.record(counter);
        } else {
            if generation - current > MAX_GENERATION_SKIP {
                return Err(OpenError::Generation);
            }
            let mut window = ReplayWindow::default();
            window.check(counter)?;
            // Derive forward without committing until the packet authenticates.
            let mut skipped = None;
            let mut key = self.recv.next();
            while key.generation < generation {
                let next = key.next();
                skipped = Some(key);
                key = next;
            }
            authentic(&key, plaintext)?;
            window.record(counter);
            let old_key = std::mem::replace(&mut self.recv, key);
            let old_window = std::mem::replace(&mut self.window, window);
            // The generation just before the new one keeps its key and window; a generation
            // skipped entirely had no packets seen.
            self.recv_previous = Some(match skipped {
                Some(k) => (k, ReplayWindow::default()),
                None => (old_key, old_window),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::packet::{Packet, SHORT_DATA_HEADER_LEN};

    fn pair(now: Instant) -> (Session, Session) {
        let a = Session::new(SessionIndex(1), SessionIndex(2), [1; 32], [2; 32], now);
        let b = Session::new(SessionIndex(2), SessionIndex(1), [2; 32], [1; 32], now);
        (a, b)
    }

    fn open(s: &mut Session, dgram: &[u8]) -> Result<Vec<u8>, OpenError> {
        let Packet::Data { header, ciphertext } = Packet::decode(dgram).unwrap() else {
            panic!("not data")
        };
        let mut out = Vec::new();
        s.open(&header, ciphertext, &mut out).map(|_| out)
    }

    #[test]
    fn seal_open_roundtrip_and_replay() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let mut buf = BytesMut::new();
        a.seal(now, Channel::Media, b"hello", &mut buf).unwrap();
        assert_eq!(buf.len(), DATA_HEADER_LEN + 5 + TAG_LEN);
        assert_eq!(open(&mut b, &buf).unwrap(), b"hello");
        assert_eq!(
            open(&mut b, &buf),
            Err(OpenError::Replay(ReplayError::Replayed))
        );
        assert_eq!(b.stats().replayed, 1);
    }

    /// Flipping any one bit of the first `bytes` of `packet` makes it fail to open at `b`.
    fn every_bit_flip_fails(b: &mut Session, packet: &[u8], bytes: usize) {
        for bit in 0..bytes * 8 {
            let mut d = packet.to_vec();
            d[bit / 8] ^= 1 << (bit % 8);
            if let Ok(Packet::Data { header, ciphertext }) = Packet::decode(&d) {
                let mut out = Vec::new();
                assert!(b.open(&header, ciphertext, &mut out).is_err(), "bit {bit}");
            }
        }
    }

    #[test]
    fn any_bit_flip_fails_and_changes_nothing() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let mut buf = BytesMut::new();
        a.seal(now, Channel::Control, b"payload!", &mut buf)
            .unwrap();
        every_bit_flip_fails(&mut b, &buf, buf.len());
        // The genuine packet still opens: failures changed no state.
        assert_eq!(open(&mut b, &buf).unwrap(), b"payload!");
    }

    #[test]
    fn rekeys_by_time_and_receiver_follows() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        let mut old = BytesMut::new();
        a.seal(t0, Channel::Media, b"gen0", &mut old).unwrap();
        let t1 = t0 + REKEY_AFTER;
        let mut new = BytesMut::new();
        a.seal(t1, Channel::Media, b"gen1", &mut new).unwrap();
        assert_eq!(a.stats().send_rekeys, 1);
        assert_eq!(a.send_counter(), (1 << 32) + 1);
        assert_eq!(open(&mut b, &new).unwrap(), b"gen1");
        // A straggler of the old generation, in flight across the key update, still opens
        // (each generation has its own window), once.
        assert_eq!(open(&mut b, &old).unwrap(), b"gen0");
        assert!(open(&mut b, &old).is_err());
        // Several more rekeys, receiver keeps up.
        let mut t = t1;
        for i in 0..5u8 {
            t += REKEY_AFTER;
            let mut p = BytesMut::new();
            a.seal(t, Channel::Media, &[i], &mut p).unwrap();
            assert_eq!(open(&mut b, &p).unwrap(), vec![i]);
        }
    }

    #[test]
    fn reordering_across_a_generation_boundary() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        a.send_counter = (1 << 32) - 2;
        let mut p1 = BytesMut::new();
        let mut p2 = BytesMut::new();
        let mut p3 = BytesMut::new();
        a.seal(t0, Channel::Media, b"1", &mut p1).unwrap();
        a.seal(t0, Channel::Media, b"2", &mut p2).unwrap();
        a.seal(t0, Channel::Media, b"3", &mut p3).unwrap(); // first of generation 1
        assert_eq!(open(&mut b, &p3).unwrap(), b"3");
        assert_eq!(open(&mut b, &p1).unwrap(), b"1");
        assert_eq!(open(&mut b, &p2).unwrap(), b"2");
    }

    #[test]
    fn far_future_generation_is_refused_without_state_change() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        a.send_counter = 10 << 32;
        let mut p = BytesMut::new();
        a.seal(t0, Channel::Media, b"x", &mut p).unwrap();
        assert_eq!(open(&mut b, &p), Err(OpenError::Generation));
        let (mut a2, _) = pair(t0);
        let mut q = BytesMut::new();
        a2.seal(t0, Channel::Media, b"y", &mut q).unwrap();
        assert_eq!(open(&mut b, &q).unwrap(), b"y");
    }

    fn short_pair(now: Instant) -> (Session, Session) {
        let (mut a, mut b) = pair(now);
        a.set_short_media(true);
        b.set_short_media(true);
        (a, b)
    }

    #[test]
    fn short_media_is_four_bytes_shorter_and_control_keeps_the_full_counter() {
        let now = Instant::now();
        let (mut a, mut b) = short_pair(now);
        let mut media = BytesMut::new();
        a.seal(now, Channel::Media, b"voice", &mut media).unwrap();
        assert_eq!(media.len(), SHORT_DATA_HEADER_LEN + 5 + TAG_LEN);
        assert_eq!(DATA_HEADER_LEN - SHORT_DATA_HEADER_LEN, 4);
        let mut control = BytesMut::new();
        a.seal(now, Channel::Control, b"hello", &mut control)
            .unwrap();
        assert_eq!(control.len(), DATA_HEADER_LEN + 5 + TAG_LEN);
        assert_eq!(open(&mut b, &media).unwrap(), b"voice");
        assert_eq!(open(&mut b, &control).unwrap(), b"hello");
        assert_eq!(
            open(&mut b, &media),
            Err(OpenError::Replay(ReplayError::Replayed))
        );
        // Every bit of the short header is authenticated.
        let mut fresh = BytesMut::new();
        a.seal(now, Channel::Media, b"again", &mut fresh).unwrap();
        every_bit_flip_fails(&mut b, &fresh, SHORT_DATA_HEADER_LEN);
        assert_eq!(open(&mut b, &fresh).unwrap(), b"again");
    }

    /// The truncated counter wraps where its generation ends: the packets around the wrap,
    /// in any order, open once each under their full counters (never a reused nonce), and
    /// the generation after it goes on.
    #[test]
    fn the_short_counter_wraps_into_the_next_generation() {
        let t0 = Instant::now();
        let orders: [[usize; 4]; 4] = [[0, 1, 2, 3], [2, 0, 3, 1], [3, 2, 1, 0], [1, 3, 0, 2]];
        for order in orders {
            let (mut a, mut b) = short_pair(t0);
            a.send_counter = (1 << 32) - 2;
            let packets: Vec<BytesMut> = (0..4u8)
                .map(|i| {
                    let mut p = BytesMut::new();
                    a.seal(t0, Channel::Media, &[i], &mut p).unwrap();
                    p
                })
                .collect();
            // The last two are the first of generation 1: counters 0 and 1 on the wire.
            assert_eq!(&packets[2][6..10], &[0, 0, 0, 0]);
            assert_eq!(a.send_counter(), (1 << 32) + 2);
            for &i in &order {
                assert_eq!(
                    open(&mut b, &packets[i]).unwrap(),
                    vec![i as u8],
                    "{order:?}"
                );
            }
            for p in &packets {
                assert!(open(&mut b, p).is_err(), "replayed: {order:?}");
            }
            let mut later = BytesMut::new();
            a.seal(t0, Channel::Media, b"later", &mut later).unwrap();
            assert_eq!(open(&mut b, &later).unwrap(), b"later");
        }
    }

    #[test]
    fn short_media_follows_time_rekeys_and_stragglers() {
        let t0 = Instant::now();
        let (mut a, mut b) = short_pair(t0);
        let mut old = BytesMut::new();
        a.seal(t0, Channel::Media, b"gen0", &mut old).unwrap();
        let mut t = t0;
        for i in 0..6u8 {
            t += REKEY_AFTER;
            let mut p = BytesMut::new();
            a.seal(t, Channel::Media, &[i], &mut p).unwrap();
            assert_eq!(open(&mut b, &p).unwrap(), vec![i]);
            if i == 0 {
                // A straggler of generation 0 after generation 1 began: it opens, and it is
                // not the newest (it must not move a session's path back).
                let Packet::Data { header, ciphertext } = Packet::decode(&old).unwrap() else {
                    panic!("not data")
                };
                let mut out = Vec::new();
                let opened = b.open(&header, ciphertext, &mut out).unwrap();
                assert_eq!((out.as_slice(), opened.newest), (&b"gen0"[..], false));
            }
        }
        assert_eq!(b.stats().opened, 7);
        assert_eq!(b.stats().auth_failed, 0);
    }

    #[test]
    fn exhaustion_is_an_error_not_a_wrap() {
        let t0 = Instant::now();
        let (mut a, _) = pair(t0);
        a.send_counter = u64::MAX;
        a.send.generation = u64::MAX >> 32;
        let mut p = BytesMut::new();
        assert_eq!(
            a.seal(t0, Channel::Media, b"x", &mut p),
            Err(SealError::Exhausted)
        );
    }
}
