//! The framing properties (and how a decoded bus message is taken apart), shared by `tests/fuzz_codecs.rs` (proptest, run by CI) and the
//! cargo-fuzz targets in `fuzz/` (which include this file by path).
//!
//! [`feed`] drives a [`FrameDecoder`] the way a socket's reader does (a read, then decode until
//! nothing is left, the buffer dropped when empty) and checks, after every read, what must hold
//! whatever a peer sends: no frame longer than `--max-frame`, an over-long frame reported as
//! [`FrameError::TooLarge`] as soon as it is known to be too long, and a buffer whose contents and
//! capacity stay bounded by `--max-frame` and the read size — never by a length the peer merely
//! claims. [`model`] says what the frames must be, computed on the whole stream at once; the two
//! must agree wherever the stream is cut.

#![allow(dead_code)]

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ppp::{
    cluster::redis::bus::{self, BusMessage},
    config::{Config, Framing},
    downstream::framing::{FrameDecoder, FrameError, LENGTH_PREFIX_LEN},
    logging::LogFilter,
    settings::Settings,
};

/// What became of a stream: the frames the node forwarded, and whether it closed the socket with
/// `frame_too_large`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Every frame, in order.
    pub frames: Vec<Bytes>,
    /// The stream held a frame longer than `max`.
    pub too_large: bool,
}

/// What a correct decoder makes of `stream` with frames of at most `max` bytes. With `eof` the
/// client closed after the stream: a last unterminated line is a message, a partial
/// length-prefixed frame is dropped.
pub fn model(framing: Framing, max: usize, stream: &[u8], eof: bool) -> Outcome {
    match framing {
        Framing::Lines => lines_model(max, stream, eof),
        Framing::LengthPrefixed => length_prefixed_model(max, stream),
        // Raw frames are the reads themselves: the model is the stream, checked in `feed`.
        Framing::Raw => Outcome { frames: Vec::new(), too_large: false },
    }
}

fn lines_model(max: usize, stream: &[u8], eof: bool) -> Outcome {
    let mut frames = Vec::new();
    let mut rest = stream;
    let strip = |line: &[u8]| line.strip_suffix(b"\r").unwrap_or(line).to_vec();
    while let Some(i) = rest.iter().position(|&b| b == b'\n') {
        let line = strip(&rest[..i]);
        if line.len() > max {
            return Outcome { frames, too_large: true };
        }
        frames.push(Bytes::from(line));
        rest = &rest[i + 1..];
    }
    if eof && !rest.is_empty() {
        let line = strip(rest);
        if line.len() > max {
            return Outcome { frames, too_large: true };
        }
        frames.push(Bytes::from(line));
    }
    // Without a newline in sight, a line longer than `max` plus a `\r` cannot end well.
    let too_large = !eof && rest.len() > max + 1;
    Outcome { frames, too_large }
}

fn length_prefixed_model(max: usize, stream: &[u8]) -> Outcome {
    let mut frames = Vec::new();
    let mut rest = stream;
    while rest.len() >= LENGTH_PREFIX_LEN {
        let (head, body) = rest.split_at(LENGTH_PREFIX_LEN);
        let n = u32::from_be_bytes(head.try_into().unwrap()) as usize;
        if n > max {
            return Outcome { frames, too_large: true };
        }
        if body.len() < n {
            break;
        }
        frames.push(Bytes::copy_from_slice(&body[..n]));
        rest = &body[n..];
    }
    Outcome { frames, too_large: false }
}

/// The largest capacity the read buffer may have after a read of at most `read_size` bytes was
/// decoded: what is left of a frame (at most `max` and a prefix, or `max` plus a `\r`), one read,
/// and the doubling a growing buffer does.
pub fn capacity_bound(max: usize, read_size: usize) -> usize {
    4 * (max + LENGTH_PREFIX_LEN + read_size) + 64
}

/// Feeds `stream` to a decoder in reads of the sizes in `cuts` (cycled; 0 counts as 1), as a
/// socket's reader does, then the end of the stream when `eof`; panics when an invariant breaks.
///
/// For `raw` framing a read is at most `max` bytes, as on a node (`min(16 KiB, --max-frame)`).
pub fn feed(framing: Framing, max: usize, stream: &[u8], cuts: &[usize], eof: bool) -> Outcome {
    assert!(max >= 1, "--max-frame is at least 1");
    let cuts: Vec<usize> = if cuts.is_empty() { vec![stream.len().max(1)] } else { cuts.to_vec() };
    let cuts: Vec<usize> = match framing {
        Framing::Raw => cuts.iter().map(|&c| c.clamp(1, max)).collect(),
        _ => cuts.iter().map(|&c| c.max(1)).collect(),
    };
    let read_size = cuts.iter().copied().max().unwrap_or(1);
    let mut decoder = FrameDecoder::new(framing, max);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = stream;
    let mut reads = cuts.iter().cycle();
    while !rest.is_empty() {
        let n = (*reads.next().unwrap()).min(rest.len());
        let (read, after) = rest.split_at(n);
        rest = after;
        if buf.capacity() - buf.len() < read_size {
            buf.reserve(read_size);
        }
        buf.extend_from_slice(read);
        if framing == Framing::Raw {
            let start = frames.len();
            if decode_all(&mut decoder, &mut buf, max, &mut frames).is_err() {
                panic!("raw framing never refuses a read");
            }
            assert_eq!(frames.len() - start, 1, "one raw read is one message");
            assert_eq!(&frames[start][..], read, "a raw message is the read, untouched");
        } else if decode_all(&mut decoder, &mut buf, max, &mut frames).is_err() {
            return Outcome { frames, too_large: true };
        }
        check_buffered(framing, max, read_size, &buf);
        if buf.is_empty() {
            buf = BytesMut::new();
        }
    }
    if eof {
        match decoder.decode_eof(&mut buf) {
            Ok(Some(frame)) => {
                assert!(frame.len() <= max, "a {}-byte last frame over a max of {max}", frame.len());
                frames.push(frame);
            }
            Ok(None) => {}
            Err(FrameError::TooLarge { max: m }) => {
                assert_eq!(m, max);
                return Outcome { frames, too_large: true };
            }
            Err(e) => panic!("decoding bytes in memory cannot fail with {e}"),
        }
    }
    Outcome { frames, too_large: false }
}

/// Decodes every whole frame in `buf`, checking each against `max`; `Err` when one is too large.
fn decode_all(decoder: &mut FrameDecoder, buf: &mut BytesMut, max: usize, out: &mut Vec<Bytes>) -> Result<(), ()> {
    loop {
        match decoder.decode(buf) {
            Ok(Some(frame)) => {
                assert!(frame.len() <= max, "a {}-byte frame over a max of {max}", frame.len());
                out.push(frame);
            }
            Ok(None) => return Ok(()),
            Err(FrameError::TooLarge { max: m }) => {
                assert_eq!(m, max, "the error names the configured limit");
                return Err(());
            }
            Err(e) => panic!("decoding bytes in memory cannot fail with {e}"),
        }
    }
}

/// After a read was decoded, what stays buffered is the start of one frame that may still turn out
/// well: never more than a frame's worth, and never memory reserved beyond that.
fn check_buffered(framing: Framing, max: usize, read_size: usize, buf: &BytesMut) {
    let most = match framing {
        // A line of `max` bytes and its `\r`, still waiting for its `\n`.
        Framing::Lines => max + 1,
        // One frame not yet whole: its prefix and part of a body of at most `max` bytes.
        Framing::LengthPrefixed => max + LENGTH_PREFIX_LEN - 1,
        Framing::Raw => 0,
    };
    assert!(
        buf.len() <= most,
        "{} bytes buffered for a max frame of {max}: the limit was not applied early",
        buf.len()
    );
    let bound = capacity_bound(max, read_size);
    assert!(
        buf.capacity() <= bound,
        "the read buffer holds {} bytes of capacity (bound {bound}) for a max frame of {max}",
        buf.capacity()
    );
}

/// The frames of `outcome` compared with the model's, for a stream cut anywhere.
pub fn check_against_model(framing: Framing, max: usize, stream: &[u8], cuts: &[usize], eof: bool) {
    let got = feed(framing, max, stream, cuts, eof);
    if framing == Framing::Raw {
        let joined: Vec<u8> = got.frames.iter().flat_map(|f| f.iter().copied()).collect();
        assert_eq!(joined, stream, "raw messages are the stream, in order, untouched");
        assert!(!got.too_large);
        return;
    }
    assert_eq!(got, model(framing, max, stream, eof), "cut at {cuts:?}");
}

/// The parts of a decoded bus message that the subscriber hands on, taken as it does.
pub fn take_apart(m: BusMessage) {
    match m {
        BusMessage::Command { command, .. } => {
            if let Ok(c) = command.into_command() {
                let _ = c.socket().map(|s| s.unix_ms());
            }
        }
        BusMessage::Receipt { status, detail, refused, .. } => {
            let _ = bus::receipt_from_wire(status, detail, refused);
        }
        BusMessage::Broadcast { scope, selector, payload, .. } => {
            let _ = bus::broadcast_from_wire(scope, selector, payload);
        }
        // A node applies another's runtime settings after validating them again.
        BusMessage::Runtime { patch, .. } => {
            let settings = Settings::new(&Config::default(), Arc::new(LogFilter::detached("info")));
            let _ = settings.apply(&patch);
        }
        BusMessage::Control { .. } => {}
    }
}
