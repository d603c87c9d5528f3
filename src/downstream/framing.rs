//! Framing: how a socket's bytes are cut into messages (`--framing`), and how outbound payloads are
//! framed again.
//!
//! Lines are cut by tokio-util's `AnyDelimiterCodec`; length-prefixed frames by hand, because
//! tokio-util's `LengthDelimitedCodec` reserves room for the whole claimed length as soon as it
//! reads a prefix, so a peer sending prefixes and one body byte each could make the node reserve
//! `--max-frame` per socket. Here nothing is reserved for a length a peer merely claims: the buffer
//! grows one read at a time as bytes really arrive, and a prefix above `--max-frame` is refused
//! before any byte of the body is buffered. Every decoder reports an over-long frame the same way
//! ([`FrameError::TooLarge`]).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, Decoder};

/// How a socket's bytes are cut into messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Framing {
    /// `\n`-terminated lines; a trailing `\r` is stripped; outbound gets `\n` when missing.
    Lines,
    /// A 4-byte big-endian length, then that many bytes.
    LengthPrefixed,
    /// Each read is one message; outbound bytes are written as they are.
    Raw,
}

/// Why a frame could not be decoded. Either closes that socket, and nothing else.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A frame longer than `--max-frame`.
    #[error("frame longer than {max} bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// Reading failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The length of the prefix in `length-prefixed` framing.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// One socket's decoder, for the configured framing.
#[derive(Debug)]
pub enum FrameDecoder {
    /// `\n`-terminated lines, `\r` stripped.
    Lines {
        /// Splits on `\n`; its limit is `max + 1` so a `\r` before the `\n` fits.
        codec: AnyDelimiterCodec,
        /// `--max-frame`, applied to the line without `\r\n`.
        max: usize,
    },
    /// A 4-byte big-endian length, then the bytes.
    LengthPrefixed {
        /// `--max-frame`.
        max: usize,
    },
    /// Whatever one read returned.
    Raw,
}

impl FrameDecoder {
    /// A decoder for `framing` with frames of at most `max` bytes.
    pub fn new(framing: Framing, max: usize) -> Self {
        match framing {
            Framing::Lines => Self::Lines {
                codec: AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), b"\n".to_vec(), max.saturating_add(1)),
                max,
            },
            Framing::LengthPrefixed => Self::LengthPrefixed { max },
            Framing::Raw => Self::Raw,
        }
    }

    /// The next whole frame in `buf`, if there is one; consumes it from `buf`.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] as soon as the frame being received is known to be too long.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self {
            Self::Lines { codec, max } => match codec.decode(buf) {
                Ok(Some(line)) => strip_cr(line, *max).map(Some),
                Ok(None) => Ok(None),
                Err(AnyDelimiterCodecError::MaxChunkLengthExceeded) => Err(FrameError::TooLarge { max: *max }),
                Err(AnyDelimiterCodecError::Io(e)) => Err(e.into()),
            },
            Self::LengthPrefixed { max } => {
                let Some(&[a, b, c, d]) = buf.get(..LENGTH_PREFIX_LEN) else { return Ok(None) };
                let len = u32::from_be_bytes([a, b, c, d]) as usize;
                if len > *max {
                    return Err(FrameError::TooLarge { max: *max });
                }
                if buf.len() < LENGTH_PREFIX_LEN + len {
                    return Ok(None);
                }
                buf.advance(LENGTH_PREFIX_LEN);
                Ok(Some(buf.split_to(len).freeze()))
            }
            Self::Raw if buf.is_empty() => Ok(None),
            Self::Raw => Ok(Some(buf.split().freeze())),
        }
    }

    /// What is left in `buf` when the client closed: a last line without `\n` is a message; a
    /// partial length-prefixed frame is not (it was cut off) and is dropped, which the caller
    /// counts.
    ///
    /// # Errors
    /// As [`FrameDecoder::decode`].
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self {
            Self::Lines { max, .. } if !buf.is_empty() => strip_cr(buf.split().freeze(), *max).map(Some),
            Self::LengthPrefixed { .. } => Ok(None),
            _ => self.decode(buf),
        }
    }
}

/// Removes one trailing `\r` and checks the line's length.
fn strip_cr(mut line: Bytes, max: usize) -> Result<Bytes, FrameError> {
    if line.last() == Some(&b'\r') {
        line.truncate(line.len() - 1);
    }
    if line.len() > max {
        return Err(FrameError::TooLarge { max });
    }
    Ok(line)
}

/// Appends `payload` to `out` framed for the wire.
pub fn encode(framing: Framing, payload: &[u8], out: &mut BytesMut) {
    match framing {
        Framing::Lines => {
            out.extend_from_slice(payload);
            if payload.last() != Some(&b'\n') {
                out.put_u8(b'\n');
            }
        }
        Framing::LengthPrefixed => {
            // Outbound payloads come from upstreams over gRPC, whose messages are far below 4 GiB.
            out.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
            out.extend_from_slice(payload);
        }
        Framing::Raw => out.extend_from_slice(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(framing: Framing, max: usize, chunks: &[&[u8]]) -> (Vec<Bytes>, Option<String>) {
        let mut decoder = FrameDecoder::new(framing, max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(f)) => out.push(f),
                    Ok(None) => break,
                    Err(e) => return (out, Some(e.to_string())),
                }
            }
        }
        (out, None)
    }

    #[test]
    fn lines_strip_crlf_and_split_coalesced_frames() {
        let (frames, err) = decode_all(Framing::Lines, 16, &[b"a\r\nbb\nc", b"c\r", b"\n"]);
        assert_eq!(frames, vec![Bytes::from("a"), Bytes::from("bb"), Bytes::from("cc")]);
        assert!(err.is_none());
    }

    #[test]
    fn lines_at_exactly_max_pass_and_one_more_fails() {
        let (frames, err) = decode_all(Framing::Lines, 4, &[b"abcd\r\n", b"abcd\n"]);
        assert_eq!(frames.len(), 2);
        assert!(err.is_none());
        let (_, err) = decode_all(Framing::Lines, 4, &[b"abcde\n"]);
        assert!(err.unwrap().contains("longer than 4"));
        // Refused before the newline arrives: an endless line never grows the buffer past max.
        let (_, err) = decode_all(Framing::Lines, 4, &[b"abcdef"]);
        assert!(err.is_some());
    }

    #[test]
    fn length_prefix_above_max_is_refused_before_the_body() {
        let (_, err) = decode_all(Framing::LengthPrefixed, 1024, &[&[0xff, 0xff, 0xff, 0xff]]);
        assert!(err.unwrap().contains("longer than 1024"));
        let mut exact = vec![0, 0, 0, 4];
        exact.extend_from_slice(b"abcd");
        let (frames, err) = decode_all(Framing::LengthPrefixed, 4, &[&exact]);
        assert_eq!(frames, vec![Bytes::from("abcd")]);
        assert!(err.is_none());
    }

    #[test]
    fn encode_appends_newline_only_when_missing() {
        let mut out = BytesMut::new();
        encode(Framing::Lines, b"a", &mut out);
        encode(Framing::Lines, b"b\n", &mut out);
        encode(Framing::LengthPrefixed, b"xy", &mut out);
        assert_eq!(&out[..], b"a\nb\n\x00\x00\x00\x02xy");
    }

    /// Frames encoded back to back and cut at random points decode to the same frames.
    fn roundtrip(framing: Framing, frames: Vec<Vec<u8>>, cuts: Vec<usize>) {
        let mut wire = BytesMut::new();
        for f in &frames {
            encode(framing, f, &mut wire);
        }
        let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in points.into_iter().chain([wire.len()]) {
            chunks.push(&wire[last..p]);
            last = p;
        }
        let (decoded, err) = decode_all(framing, 256, &chunks);
        assert!(err.is_none(), "{err:?}");
        let expected: Vec<Bytes> = frames.into_iter().map(Bytes::from).collect();
        assert_eq!(decoded, expected);
    }

    proptest! {
        #[test]
        fn lines_survive_any_split(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n' && *b != b'\r'), 0..256), 0..20),
            cuts in proptest::collection::vec(any::<usize>(), 0..30),
        ) {
            roundtrip(Framing::Lines, frames, cuts);
        }

        #[test]
        fn length_prefixed_survives_any_split(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..256), 0..20),
            cuts in proptest::collection::vec(any::<usize>(), 0..30),
        ) {
            roundtrip(Framing::LengthPrefixed, frames, cuts);
        }

        #[test]
        fn no_input_panics_any_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..2048), max in 1usize..64) {
            for framing in [Framing::Lines, Framing::LengthPrefixed, Framing::Raw] {
                let _ = decode_all(framing, max, &[&bytes]);
            }
        }
    }
}
