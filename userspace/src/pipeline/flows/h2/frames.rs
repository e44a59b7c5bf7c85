//! One direction of an HTTP/2 connection as a frame stream, rebuilt from the records the
//! sensor reports: each record is the first `bytes.len()` bytes of a Read or Write of
//! `total_len` bytes, and records arrive in call order, so the stream is the records'
//! bytes with a known-size gap after each short one.
//!
//! A gap is harmless where the frame lengths already say what it covers (a DATA or other
//! payload we do not need); it is fatal where it covers a frame header (the next length is
//! unknown) or part of a header block (the HPACK state is unknown). Fatal gaps are
//! reported, never skipped by guessing.

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 9;

pub mod kind {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const PUSH_PROMISE: u8 = 5;
    pub const GOAWAY: u8 = 7;
    pub const CONTINUATION: u8 = 9;
}

pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHeader {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Self {
        FrameHeader {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    /// Frames that carry a header block fragment, which HPACK needs whole.
    fn carries_block(&self) -> bool {
        matches!(
            self.kind,
            kind::HEADERS | kind::CONTINUATION | kind::PUSH_PROMISE
        )
    }
}

/// Why a direction can no longer be followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A capture gap covered a frame header or part of a header block.
    Gap,
    /// A header block fragment larger than the per-connection buffer.
    BlockTooLarge,
    /// Padding or priority fields longer than the frame.
    BadPadding,
}

/// A frame whose end was reached. `payload` is what was kept of it: all of a header block
/// fragment (padding and priority fields removed), the first bytes of a DATA frame's data
/// (padding removed), a GOAWAY's last stream id, nothing of other frames.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: FrameHeader,
    pub payload: &'a [u8],
    /// Some of the bytes that would have been kept fell into a capture gap (DATA only).
    pub lost: bool,
}

#[derive(Debug)]
struct Current {
    header: FrameHeader,
    /// Payload bytes still to come.
    remaining: u32,
    /// Payload bytes to keep from the start.
    keep: u32,
    lost: bool,
}

/// Rebuilds one direction's frames. Memory: at most `max_keep` payload bytes.
#[derive(Debug, Default)]
pub struct FrameReader {
    header: [u8; HEADER_LEN],
    header_len: usize,
    current: Option<Current>,
    kept: Vec<u8>,
}

/// DATA bytes kept for the body prefix, plus the pad length byte.
const DATA_KEEP: u32 = crate::pipeline::http::MAX_BODY_PREFIX as u32 + 1;

impl FrameReader {
    /// Bytes held for a frame in progress.
    pub fn buffered(&self) -> usize {
        self.kept.capacity() + self.header_len
    }

    /// Feeds the captured bytes of one record followed by a gap of `gap` uncaptured
    /// bytes, calling `on_frame` for every frame that ends. Header block fragments longer
    /// than `max_keep` are an error.
    pub fn feed<E>(
        &mut self,
        mut bytes: &[u8],
        gap: u64,
        max_keep: usize,
        on_frame: &mut impl FnMut(Frame<'_>) -> Result<(), E>,
    ) -> Result<(), FeedError<E>> {
        while !bytes.is_empty() {
            let Some(cur) = &mut self.current else {
                let take = (HEADER_LEN - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&bytes[..take]);
                self.header_len += take;
                bytes = &bytes[take..];
                if self.header_len == HEADER_LEN {
                    self.header_len = 0;
                    self.start(FrameHeader::parse(&self.header), max_keep)?;
                    self.finish_if_done(on_frame)?;
                }
                continue;
            };
            let take = (cur.remaining as usize).min(bytes.len());
            let consumed = cur.header.len - cur.remaining;
            let keep_now = (cur.keep.saturating_sub(consumed) as usize).min(take);
            self.kept.extend_from_slice(&bytes[..keep_now]);
            cur.remaining -= take as u32;
            bytes = &bytes[take..];
            self.finish_if_done(on_frame)?;
        }
        self.skip(gap, on_frame)
    }

    fn start<E>(&mut self, header: FrameHeader, max_keep: usize) -> Result<(), FeedError<E>> {
        let keep = if header.carries_block() {
            if header.len as usize > max_keep {
                return Err(FeedError::Frame(FrameError::BlockTooLarge));
            }
            header.len
        } else if header.kind == kind::DATA {
            header.len.min(DATA_KEEP)
        } else if header.kind == kind::GOAWAY {
            // The last stream id the sender processed.
            header.len.min(4)
        } else {
            0
        };
        self.kept.clear();
        self.current = Some(Current {
            header,
            remaining: header.len,
            keep,
            lost: false,
        });
        Ok(())
    }

    fn skip<E>(
        &mut self,
        gap: u64,
        on_frame: &mut impl FnMut(Frame<'_>) -> Result<(), E>,
    ) -> Result<(), FeedError<E>> {
        if gap == 0 {
            return Ok(());
        }
        let Some(cur) = &mut self.current else {
            return Err(FeedError::Frame(FrameError::Gap));
        };
        if gap > u64::from(cur.remaining) || cur.header.carries_block() {
            return Err(FeedError::Frame(FrameError::Gap));
        }
        let consumed = cur.header.len - cur.remaining;
        if consumed < cur.keep {
            cur.lost = true;
        }
        cur.remaining -= gap as u32;
        self.finish_if_done(on_frame)
    }

    fn finish_if_done<E>(
        &mut self,
        on_frame: &mut impl FnMut(Frame<'_>) -> Result<(), E>,
    ) -> Result<(), FeedError<E>> {
        let Some(cur) = self.current.as_ref().filter(|c| c.remaining == 0) else {
            return Ok(());
        };
        let header = cur.header;
        let lost = cur.lost;
        self.current = None;
        let payload = strip(&header, &self.kept, lost)?;
        let result = on_frame(Frame {
            header,
            payload,
            lost,
        });
        if self.kept.capacity() > 4096 {
            self.kept = Vec::new();
        }
        result.map_err(FeedError::Handler)
    }
}

/// The useful part of a kept payload: padding and priority fields removed.
fn strip<'a, E>(h: &FrameHeader, kept: &'a [u8], lost: bool) -> Result<&'a [u8], FeedError<E>> {
    let bad = || FeedError::Frame(FrameError::BadPadding);
    let mut start = 0usize;
    let mut pad = 0usize;
    let padded =
        h.has(flag::PADDED) && matches!(h.kind, kind::DATA | kind::HEADERS | kind::PUSH_PROMISE);
    if padded {
        if h.len == 0 {
            return Err(bad());
        }
        if kept.is_empty() {
            // The pad length itself was lost (DATA only): nothing usable.
            return Ok(&[]);
        }
        pad = usize::from(kept[0]);
        start = 1;
    }
    if h.kind == kind::HEADERS && h.has(flag::PRIORITY) {
        start += 5;
    }
    if h.kind == kind::PUSH_PROMISE {
        // The promised stream id.
        start += 4;
    }
    let len = h.len as usize;
    if start + pad > len {
        return Err(bad());
    }
    let data_end = len - pad;
    let end = data_end.min(kept.len());
    if lost && h.kind != kind::DATA {
        // A GOAWAY whose last stream id was not captured: ending the wrong streams
        // would be a guess.
        return Err(FeedError::Frame(FrameError::Gap));
    }
    Ok(kept.get(start..end).unwrap_or(&[]))
}

#[derive(Debug, PartialEq, Eq)]
pub enum FeedError<E> {
    Frame(FrameError),
    Handler(E),
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut v = len.to_be_bytes()[1..].to_vec();
        v.push(kind);
        v.push(flags);
        v.extend_from_slice(&stream.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    type Got = Vec<(FrameHeader, Vec<u8>, bool)>;

    fn feed_all(r: &mut FrameReader, parts: &[(&[u8], u64)]) -> Result<Got, FeedError<()>> {
        let mut got = Vec::new();
        for (bytes, gap) in parts {
            r.feed(bytes, *gap, 1 << 14, &mut |f: Frame<'_>| {
                got.push((f.header, f.payload.to_vec(), f.lost));
                Ok(())
            })?;
        }
        Ok(got)
    }

    #[test]
    fn frames_split_anywhere_are_rebuilt() {
        let mut stream = frame(kind::HEADERS, flag::END_HEADERS, 1, b"\x82\x84");
        stream.extend(frame(kind::DATA, flag::END_STREAM, 1, b"hello"));
        stream.extend(frame(8, 0, 0, &[0, 0, 1, 0]));
        for cut in 0..stream.len() {
            let mut r = FrameReader::default();
            let got = feed_all(&mut r, &[(&stream[..cut], 0), (&stream[cut..], 0)]).unwrap();
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert_eq!(got[0].1, b"\x82\x84");
            assert_eq!(got[1].1, b"hello");
            assert_eq!(got[2].1, b"", "other frames keep nothing");
        }
    }

    #[test]
    fn padding_and_priority_are_removed() {
        let mut p = vec![3u8];
        p.extend_from_slice(&[0, 0, 0, 3, 16]);
        p.extend_from_slice(b"\x82");
        p.extend_from_slice(&[0, 0, 0]);
        let f = frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::PADDED | flag::PRIORITY,
            1,
            &p,
        );
        let d = frame(kind::DATA, flag::PADDED, 1, b"\x02ab\0\0");
        let mut r = FrameReader::default();
        let got = feed_all(&mut r, &[(&f, 0), (&d, 0)]).unwrap();
        assert_eq!(got[0].1, b"\x82");
        assert_eq!(got[1].1, b"ab");
        let bad = frame(kind::HEADERS, flag::PADDED, 1, b"\x09ab");
        assert_eq!(
            feed_all(&mut FrameReader::default(), &[(&bad, 0)]),
            Err(FeedError::Frame(FrameError::BadPadding))
        );
    }

    #[test]
    fn gaps_inside_data_are_skipped_and_elsewhere_fatal() {
        let body = vec![b'x'; 4000];
        let d = frame(kind::DATA, 0, 1, &body);
        let h = frame(kind::HEADERS, flag::END_HEADERS, 3, b"\x82");
        // 1024 captured of the DATA frame, the rest a gap, then the next frame.
        let mut r = FrameReader::default();
        let got = feed_all(&mut r, &[(&d[..1024], (d.len() - 1024) as u64), (&h, 0)]).unwrap();
        assert_eq!(got.len(), 2);
        assert!(!got[0].2, "the kept prefix was captured");
        assert_eq!(got[1].1, b"\x82");
        // A gap reaching past the DATA frame covers the next header.
        let mut r = FrameReader::default();
        assert_eq!(
            feed_all(&mut r, &[(&d[..1024], d.len() as u64)]),
            Err(FeedError::Frame(FrameError::Gap))
        );
        // A gap inside a header block.
        let big = frame(kind::HEADERS, flag::END_HEADERS, 1, &[0x82; 2000]);
        let mut r = FrameReader::default();
        assert_eq!(
            feed_all(&mut r, &[(&big[..1024], 985)]),
            Err(FeedError::Frame(FrameError::Gap))
        );
        // A gap at a frame boundary.
        let mut r = FrameReader::default();
        assert_eq!(
            feed_all(&mut r, &[(&h, 9)]),
            Err(FeedError::Frame(FrameError::Gap))
        );
        // A gap over the start of a DATA payload marks the prefix lost.
        let mut r = FrameReader::default();
        let got = feed_all(&mut r, &[(&d[..12], 3997)]).unwrap();
        assert_eq!(got[0].1, b"xxx");
        assert!(got[0].2);
    }

    #[test]
    fn oversized_blocks_are_refused() {
        let big = frame(kind::CONTINUATION, 0, 1, &[0; 100]);
        let mut r = FrameReader::default();
        let err = r.feed(&big, 0, 50, &mut |_f: Frame<'_>| Ok::<(), ()>(()));
        assert_eq!(err, Err(FeedError::Frame(FrameError::BlockTooLarge)));
    }
}
