//! Length-prefixed framing for reliable streams (TCP, TLS over the fallback ports, relayed TCP).
//!
//! Each frame is a big-endian `u16` length followed by that many bytes, which are one Natter
//! packet exactly as it would travel in a UDP datagram. Zero-length frames are invalid. The
//! decoder buffers at most one frame of the configured maximum, so a peer that announces a huge
//! frame gets [`DecodeError::TooLong`] (and its connection closed by the caller) instead of
//! making us allocate.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{DecodeError, MAX_FRAME};

/// Length of the frame prefix.
pub const PREFIX_LEN: usize = 2;

/// Append one framed packet to `out`.
///
/// # Errors
/// [`DecodeError::TooLong`] when `packet` is longer than `u16::MAX`, [`DecodeError::Invalid`]
/// when it is empty.
pub fn encode(packet: &[u8], out: &mut BytesMut) -> Result<(), DecodeError> {
    let len = u16::try_from(packet.len()).map_err(|_| DecodeError::TooLong {
        what: "frame",
        len: packet.len(),
        max: usize::from(u16::MAX),
    })?;
    if len == 0 {
        return Err(DecodeError::Invalid("empty frame"));
    }
    out.reserve(PREFIX_LEN + packet.len());
    out.put_u16(len);
    out.put_slice(packet);
    Ok(())
}

/// Incremental decoder: push stream bytes in, pull whole frames out.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame: usize,
    failed: bool,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(MAX_FRAME)
    }
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `max_frame` bytes (at most `u16::MAX`).
    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_frame: max_frame.min(usize::from(u16::MAX)),
            failed: false,
        }
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feed stream bytes. Buffers at most one incomplete frame plus what `data` holds; call
    /// [`FrameDecoder::next_frame`] until it returns `Ok(None)` after each push.
    pub fn push(&mut self, data: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(data);
        }
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    ///
    /// # Errors
    /// Once an error is returned the stream is unrecoverable (framing is lost) and every later
    /// call returns the same kind of error; the caller should close the connection.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, DecodeError> {
        if self.failed {
            return Err(DecodeError::Invalid("stream framing lost"));
        }
        if self.buf.len() < PREFIX_LEN {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
        if len == 0 || len > self.max_frame {
            self.failed = true;
            self.buf = BytesMut::new();
            return Err(if len == 0 {
                DecodeError::Invalid("empty frame")
            } else {
                DecodeError::TooLong {
                    what: "frame",
                    len,
                    max: self.max_frame,
                }
            });
        }
        if self.buf.len() < PREFIX_LEN + len {
            return Ok(None);
        }
        self.buf.advance(PREFIX_LEN);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn oversized_frame_is_refused_without_buffering_it() {
        let mut d = FrameDecoder::new(100);
        d.push(&[0x01, 0x00]); // 256 bytes announced
        assert!(matches!(
            d.next_frame(),
            Err(DecodeError::TooLong { len: 256, .. })
        ));
        d.push(&[0u8; 1000]);
        assert_eq!(d.buffered(), 0);
        assert!(d.next_frame().is_err());
    }

    #[test]
    fn empty_frames_are_invalid() {
        let mut out = BytesMut::new();
        assert!(encode(&[], &mut out).is_err());
        let mut d = FrameDecoder::default();
        d.push(&[0, 0]);
        assert!(d.next_frame().is_err());
    }

    proptest! {
        #[test]
        fn frames_survive_any_split(frames in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 1..300), 0..20),
                cuts in proptest::collection::vec(any::<usize>(), 0..10)) {
            let mut stream = BytesMut::new();
            for f in &frames {
                encode(f, &mut stream).unwrap();
            }
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
            points.push(0);
            points.push(stream.len());
            points.sort_unstable();
            let mut d = FrameDecoder::new(300);
            let mut got = Vec::new();
            for w in points.windows(2) {
                d.push(&stream[w[0]..w[1]]);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f.to_vec());
                }
            }
            prop_assert_eq!(got, frames);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut d = FrameDecoder::new(512);
            d.push(&data);
            while let Ok(Some(_)) = d.next_frame() {}
        }
    }
}
