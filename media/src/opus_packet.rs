//! Reading an Opus packet's table-of-contents byte (RFC 6716 section 3.1) in safe Rust.
//!
//! The jitter buffer needs a packet's duration and whether it carries in-band FEC (SILK LBRR)
//! data before it hands the packet to the decoder; both are read here without calling into
//! libopus, so untrusted input never reaches C code just to be classified.

/// One tick of media time: 2.5 ms, the shortest Opus frame. Every Opus packet lasts a whole
/// number of ticks, at any sample rate.
pub const TICK_US: u64 = 2_500;

/// Why an Opus packet's table of contents could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TocError {
    /// The packet is empty (no TOC byte).
    #[error("empty Opus packet")]
    Empty,
    /// A code-3 packet without its frame-count byte.
    #[error("Opus code-3 packet without a frame count")]
    MissingFrameCount,
    /// A code-3 packet announcing zero frames.
    #[error("Opus packet with zero frames")]
    ZeroFrames,
    /// More than the 120 ms an Opus packet may last.
    #[error("Opus packet longer than 120 ms ({ticks} ticks of 2.5 ms)")]
    TooLong {
        /// The announced duration in ticks.
        ticks: u32,
    },
}

/// The coding mode of an Opus packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpusMode {
    /// Linear prediction (speech), NB to WB.
    Silk,
    /// SILK for the low band plus CELT above it (SWB, FB).
    Hybrid,
    /// MDCT only.
    Celt,
}

/// What the TOC byte (and frame count) says about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Toc {
    /// Coding mode.
    pub mode: OpusMode,
    /// Duration of one frame, in ticks of 2.5 ms.
    pub frame_ticks: u32,
    /// Number of frames in the packet.
    pub frames: u32,
    /// Stereo flag.
    pub stereo: bool,
    /// Frame-packing code (0 to 3).
    pub code: u8,
}

impl Toc {
    /// Parse the TOC of `packet`.
    pub fn parse(packet: &[u8]) -> Result<Self, TocError> {
        let &toc = packet.first().ok_or(TocError::Empty)?;
        let config = toc >> 3;
        let (mode, frame_ticks) = match config {
            0..=11 => (OpusMode::Silk, [4, 8, 16, 24][usize::from(config % 4)]),
            12..=15 => (OpusMode::Hybrid, [4, 8][usize::from(config % 2)]),
            _ => (OpusMode::Celt, [1, 2, 4, 8][usize::from(config % 4)]),
        };
        let code = toc & 0x03;
        let frames = match code {
            0 => 1,
            1 | 2 => 2,
            _ => {
                let count = u32::from(packet.get(1).ok_or(TocError::MissingFrameCount)? & 0x3F);
                if count == 0 {
                    return Err(TocError::ZeroFrames);
                }
                count
            }
        };
        let ticks = frames * frame_ticks;
        if ticks > 48 {
            return Err(TocError::TooLong { ticks });
        }
        Ok(Self {
            mode,
            frame_ticks,
            frames,
            stereo: toc & 0x04 != 0,
            code,
        })
    }

    /// The packet's duration in ticks of 2.5 ms.
    pub fn ticks(&self) -> u32 {
        self.frames * self.frame_ticks
    }
}

/// The duration of an Opus packet in ticks of 2.5 ms.
pub fn packet_ticks(packet: &[u8]) -> Result<u32, TocError> {
    Toc::parse(packet).map(|t| t.ticks())
}

/// True when the packet's first frame carries SILK in-band FEC (LBRR) data for the frame
/// before it.
///
/// A SILK (or hybrid) frame's range-coded data starts with one voice-activity bit per 20 ms
/// SILK frame and then the LBRR flag, each coded with probability 1/2, so they are the leading
/// bits of the first data byte (the same shortcut libopus 1.5's `opus_packet_has_lbrr` takes).
/// Only code-0 and code-1 packets are inspected (what Natter's encoder produces); for other
/// codes this answers `false`.
pub fn has_lbrr(packet: &[u8]) -> bool {
    let Ok(toc) = Toc::parse(packet) else {
        return false;
    };
    if toc.mode == OpusMode::Celt || toc.code > 1 {
        return false;
    }
    let Some(&first) = packet.get(1) else {
        return false;
    };
    // 10 and 20 ms frames hold one SILK frame, 40 and 60 ms frames two and three.
    let silk_frames = (toc.frame_ticks / 8).max(1);
    let mut lbrr = (first >> (7 - silk_frames)) & 1 == 1;
    if toc.stereo {
        lbrr |= (first >> (6 - 2 * silk_frames)) & 1 == 1;
    }
    lbrr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_of_every_config() {
        // SILK WB 20 ms, code 0.
        assert_eq!(packet_ticks(&[(9 << 3), 0]), Ok(8));
        // SILK NB 60 ms.
        assert_eq!(packet_ticks(&[(3 << 3), 0]), Ok(24));
        // CELT FB 2.5 ms, code 1: two frames.
        assert_eq!(packet_ticks(&[(28 << 3) | 1]), Ok(2));
        // Code 3 with 6 frames of 20 ms = 120 ms.
        assert_eq!(packet_ticks(&[(31 << 3) | 3, 6]), Ok(48));
        assert_eq!(
            packet_ticks(&[(31 << 3) | 3, 7]),
            Err(TocError::TooLong { ticks: 56 })
        );
        assert_eq!(
            packet_ticks(&[(31 << 3) | 3]),
            Err(TocError::MissingFrameCount)
        );
        assert_eq!(packet_ticks(&[(31 << 3) | 3, 0]), Err(TocError::ZeroFrames));
        assert_eq!(packet_ticks(&[]), Err(TocError::Empty));
    }

    #[test]
    fn lbrr_bit_positions() {
        // SILK 20 ms mono: VAD bit 7, LBRR bit 6.
        assert!(has_lbrr(&[9 << 3, 0b0100_0000]));
        assert!(!has_lbrr(&[9 << 3, 0b1000_0000]));
        // SILK 40 ms: two VAD bits, LBRR bit 5.
        assert!(has_lbrr(&[10 << 3, 0b0010_0000]));
        // CELT never has LBRR.
        assert!(!has_lbrr(&[31 << 3, 0xFF]));
        assert!(!has_lbrr(&[9 << 3]));
    }
}
