//! The media frame: what travels inside Natter's encrypted media envelope
//! ([`Channel::Media`](natter_core::wire::packet::Channel::Media)).
//!
//! ```text
//! byte 0     [version:2 = 0][red blocks:2][reserved:2 = 0][DTX:1][FEC:1]
//! bytes 1-2  sequence number u16 (one per frame sent; wraps)
//! bytes 3-4  timestamp u16, in ticks of 2.5 ms (wraps every 163.84 s)
//! then, per redundant block, oldest first:
//!            [timestamp offset back from this frame, in ticks: u8 >= 1][length: u8 >= 1]
//! then       the redundant Opus payloads, oldest first, then the primary Opus payload
//! ```
//!
//! The envelope's 64-bit counter authenticates and orders datagrams, but it counts every
//! datagram of the session (control ones too) and says nothing about media time, so a frame
//! carries its own sequence number (loss and duplicate detection, contiguous across DTX
//! silence) and timestamp (playout position). Both are 16 bits and extended by the receiver
//! against the highest value seen, as RTP does. The timestamp counts 2.5 ms ticks, the
//! shortest Opus frame, so it does not depend on the sample rate.
//!
//! **Cost**: 5 bytes per frame without redundancy (RTP would take 12). At 50 frames/s with
//! IPv4 (20) + UDP (8) + the short media envelope (26), the overhead is 59 bytes per frame,
//! 23.6 kbit/s (63 bytes and 25.2 kbit/s with the full 30-byte envelope).
//!
//! **Flags**: *FEC* means the primary Opus payload carries in-band FEC (SILK LBRR) for the
//! frame before it. *DTX* means the sender entered discontinuous transmission with this frame:
//! until the next sequence number, missing time is silence, not loss. A *redundant block*
//! (audio RED, RFC 2198 style, with a 2-byte block header instead of 4) repeats the primary
//! payload of an earlier frame so a receiver can rebuild it when that frame was lost.

use crate::opus_packet::{self, TocError};

/// Length of the fixed header.
pub const HEADER_LEN: usize = 5;
/// Most redundant blocks one frame can carry.
pub const MAX_RED_BLOCKS: usize = 3;
/// The largest media frame (the envelope's 1200-byte datagram limit minus its 30 bytes: the
/// full envelope's, so a frame fits whichever envelope carries it).
pub const MAX_FRAME_LEN: usize = 1200 - 30;

const FLAG_FEC: u8 = 0x01;
const FLAG_DTX: u8 = 0x02;
const RESERVED_MASK: u8 = 0x0C;
const RED_SHIFT: u8 = 4;
const VERSION_SHIFT: u8 = 6;

/// Why bytes are not a valid media frame. Decoding never panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than its header says.
    #[error("media frame truncated")]
    Truncated,
    /// Longer than any datagram could carry.
    #[error("media frame too long ({0} bytes)")]
    TooLong(usize),
    /// A frame version this build does not know.
    #[error("unsupported media frame version {0}")]
    UnsupportedVersion(u8),
    /// Reserved flag bits set.
    #[error("reserved media frame bits set")]
    Reserved,
    /// A redundant block with a zero offset or length, or offsets not strictly decreasing.
    #[error("invalid redundant block")]
    BadRedundantBlock,
    /// No primary payload.
    #[error("media frame without a primary payload")]
    EmptyPayload,
    /// An Opus payload whose TOC is invalid.
    #[error("invalid Opus payload: {0}")]
    Opus(#[from] TocError),
}

/// A redundant copy of an earlier frame's primary payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedBlock<'a> {
    /// How far back, in ticks, the block's timestamp lies from the frame's.
    pub offset_ticks: u8,
    /// The earlier frame's Opus payload.
    pub payload: &'a [u8],
}

/// A decoded media frame, borrowing from the datagram's plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaFrame<'a> {
    /// Sequence number (16 bits on the wire).
    pub seq: u16,
    /// Timestamp in ticks of 2.5 ms (16 bits on the wire).
    pub timestamp: u16,
    /// The primary payload carries in-band FEC for the previous frame.
    pub fec: bool,
    /// The sender entered DTX with this frame.
    pub dtx: bool,
    /// Redundant blocks, oldest first; only the first `red_count` are valid.
    red: [RedBlock<'a>; MAX_RED_BLOCKS],
    red_count: u8,
    /// The primary Opus payload.
    pub payload: &'a [u8],
}

impl<'a> MediaFrame<'a> {
    /// A frame without redundancy.
    pub fn new(seq: u16, timestamp: u16, payload: &'a [u8]) -> Self {
        Self {
            seq,
            timestamp,
            fec: false,
            dtx: false,
            red: [RedBlock {
                offset_ticks: 0,
                payload: &[],
            }; MAX_RED_BLOCKS],
            red_count: 0,
            payload,
        }
    }

    /// Add a redundant block (call oldest first). Returns false, changing nothing, when the
    /// frame already has [`MAX_RED_BLOCKS`] or the block is invalid (empty, longer than 255
    /// bytes, zero offset, or not newer than the previous block).
    pub fn push_red(&mut self, block: RedBlock<'a>) -> bool {
        let n = usize::from(self.red_count);
        let ordered = n == 0 || self.red[n - 1].offset_ticks > block.offset_ticks;
        if n >= MAX_RED_BLOCKS
            || block.offset_ticks == 0
            || block.payload.is_empty()
            || block.payload.len() > 255
            || !ordered
        {
            return false;
        }
        self.red[n] = block;
        self.red_count += 1;
        true
    }

    /// The redundant blocks, oldest first.
    pub fn red(&self) -> &[RedBlock<'a>] {
        &self.red[..usize::from(self.red_count)]
    }

    /// The encoded length.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + self
                .red()
                .iter()
                .map(|b| 2 + b.payload.len())
                .sum::<usize>()
            + self.payload.len()
    }

    /// Append the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        let flags = (self.red_count << RED_SHIFT)
            | if self.fec { FLAG_FEC } else { 0 }
            | if self.dtx { FLAG_DTX } else { 0 };
        out.push(flags);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        for b in self.red() {
            // push_red guarantees the length fits a byte.
            out.push(b.offset_ticks);
            out.push(u8::try_from(b.payload.len()).unwrap_or(u8::MAX));
        }
        for b in self.red() {
            out.extend_from_slice(b.payload);
        }
        out.extend_from_slice(self.payload);
    }

    /// Decode a frame. Opus payloads are checked for a valid TOC (a duration of at most
    /// 120 ms), nothing more: decoding them is the codec's job.
    pub fn decode(buf: &'a [u8]) -> Result<Self, FrameError> {
        if buf.len() > MAX_FRAME_LEN {
            return Err(FrameError::TooLong(buf.len()));
        }
        let (head, mut rest) = buf
            .split_first_chunk::<HEADER_LEN>()
            .ok_or(FrameError::Truncated)?;
        let flags = head[0];
        let version = flags >> VERSION_SHIFT;
        if version != 0 {
            return Err(FrameError::UnsupportedVersion(version));
        }
        if flags & RESERVED_MASK != 0 {
            return Err(FrameError::Reserved);
        }
        let red_count = (flags >> RED_SHIFT) & 0x03;
        let mut frame = Self::new(
            u16::from_be_bytes([head[1], head[2]]),
            u16::from_be_bytes([head[3], head[4]]),
            &[],
        );
        frame.fec = flags & FLAG_FEC != 0;
        frame.dtx = flags & FLAG_DTX != 0;
        let mut headers = [(0u8, 0usize); MAX_RED_BLOCKS];
        for h in headers.iter_mut().take(usize::from(red_count)) {
            let (&[offset, len], tail) =
                rest.split_first_chunk::<2>().ok_or(FrameError::Truncated)?;
            *h = (offset, usize::from(len));
            rest = tail;
        }
        for &(offset_ticks, len) in headers.iter().take(usize::from(red_count)) {
            if rest.len() < len {
                return Err(FrameError::Truncated);
            }
            let (payload, tail) = rest.split_at(len);
            rest = tail;
            opus_packet::packet_ticks(payload)?;
            if !frame.push_red(RedBlock {
                offset_ticks,
                payload,
            }) {
                return Err(FrameError::BadRedundantBlock);
            }
        }
        if rest.is_empty() {
            return Err(FrameError::EmptyPayload);
        }
        opus_packet::packet_ticks(rest)?;
        frame.payload = rest;
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OPUS_20MS: [u8; 3] = [9 << 3, 0x40, 0x12];

    #[test]
    fn byte_exact_plain_frame() {
        let mut f = MediaFrame::new(0x0102, 0x0304, &OPUS_20MS);
        f.fec = true;
        let mut out = Vec::new();
        f.encode(&mut out);
        assert_eq!(out, [0x01, 0x01, 0x02, 0x03, 0x04, 9 << 3, 0x40, 0x12]);
        assert_eq!(MediaFrame::decode(&out), Ok(f));
        assert_eq!(out.len(), f.encoded_len());
    }

    #[test]
    fn byte_exact_red_frame() {
        let older = [9 << 3, 0xAA];
        let newer = [9 << 3, 0xBB, 0xCC];
        let mut f = MediaFrame::new(7, 100, &OPUS_20MS);
        f.dtx = true;
        assert!(f.push_red(RedBlock {
            offset_ticks: 16,
            payload: &older
        }));
        assert!(f.push_red(RedBlock {
            offset_ticks: 8,
            payload: &newer
        }));
        // Out of order, zero offset, empty: refused.
        assert!(!f.push_red(RedBlock {
            offset_ticks: 9,
            payload: &newer
        }));
        let mut out = Vec::new();
        f.encode(&mut out);
        assert_eq!(
            out,
            [
                0x22,
                0,
                7,
                0,
                100,
                16,
                2,
                8,
                3,
                9 << 3,
                0xAA,
                9 << 3,
                0xBB,
                0xCC,
                9 << 3,
                0x40,
                0x12
            ]
        );
        let d = MediaFrame::decode(&out).unwrap();
        assert_eq!(d, f);
        assert_eq!(d.red()[1].payload, &newer);
    }

    #[test]
    fn typed_errors() {
        assert_eq!(MediaFrame::decode(&[0, 0, 1]), Err(FrameError::Truncated));
        assert_eq!(
            MediaFrame::decode(&[0x40, 0, 0, 0, 0, 8]),
            Err(FrameError::UnsupportedVersion(1))
        );
        assert_eq!(
            MediaFrame::decode(&[0x04, 0, 0, 0, 0, 8]),
            Err(FrameError::Reserved)
        );
        assert_eq!(
            MediaFrame::decode(&[0, 0, 0, 0, 0]),
            Err(FrameError::EmptyPayload)
        );
        // A redundant block whose length runs past the end.
        assert_eq!(
            MediaFrame::decode(&[0x10, 0, 0, 0, 0, 8, 9, 72]),
            Err(FrameError::Truncated)
        );
        // Zero offset.
        assert_eq!(
            MediaFrame::decode(&[0x10, 0, 0, 0, 0, 0, 1, 72, 72]),
            Err(FrameError::BadRedundantBlock)
        );
        // A 140 ms Opus payload.
        assert_eq!(
            MediaFrame::decode(&[0, 0, 0, 0, 0, (31 << 3) | 3, 7]),
            Err(FrameError::Opus(TocError::TooLong { ticks: 56 }))
        );
        assert_eq!(
            MediaFrame::decode(&[0u8; MAX_FRAME_LEN + 1]),
            Err(FrameError::TooLong(MAX_FRAME_LEN + 1))
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = MediaFrame::decode(&bytes);
        }

        #[test]
        fn round_trip(
            seq: u16,
            ts: u16,
            fec: bool,
            dtx: bool,
            primary in proptest::collection::vec(any::<u8>(), 1..200),
            reds in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..100), 0..=3),
        ) {
            // Make every payload a valid 20 ms SILK packet.
            let fix = |mut p: Vec<u8>| { p[0] = 9 << 3; p };
            let primary = fix(primary);
            let reds: Vec<Vec<u8>> = reds.into_iter().map(fix).collect();
            let mut f = MediaFrame::new(seq, ts, &primary);
            f.fec = fec;
            f.dtx = dtx;
            for (i, r) in reds.iter().enumerate() {
                let offset = u8::try_from(8 * (reds.len() - i)).unwrap();
                let pushed = f.push_red(RedBlock { offset_ticks: offset, payload: r });
                prop_assert!(pushed);
            }
            let mut out = Vec::new();
            f.encode(&mut out);
            prop_assert_eq!(out.len(), f.encoded_len());
            let d = MediaFrame::decode(&out).unwrap();
            prop_assert_eq!(d, f);
        }

        #[test]
        fn decoded_frames_reencode_identically(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(f) = MediaFrame::decode(&bytes) {
                let mut out = Vec::new();
                f.encode(&mut out);
                prop_assert_eq!(out, bytes);
            }
        }
    }
}
