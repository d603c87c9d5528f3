//! Property fuzzing of every decoder a peer's bytes reach: the three framing codecs (what a client
//! sends), bus payloads (what anyone who can `PUBLISH` on Redis sends), one-socket commands from
//! the bus, and upstream commands (what an upstream sends). The cargo-fuzz targets in `fuzz/` run
//! the same properties under libFuzzer; these run in CI.
//!
//! What must hold for any input: no panic; no frame longer than `--max-frame`; an over-long frame
//! reported as `frame_too_large` as soon as it is known to be too long; and memory bounded by the
//! limits, never by a length the peer merely claims. The last is checked two ways: the read
//! buffer's capacity after every read, and the largest single allocation made while decoding (a
//! global allocator that remembers, per thread, the biggest block asked for).

mod codecs;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    collections::HashMap,
    sync::Arc,
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use ppp::{
    cluster::redis::bus::{self, BusError, BusMessage, MAX_BUS_PAYLOAD, WireCommand},
    command::{Command, MAX_CLOSE_DETAIL},
    config::{Config, Framing},
    downstream::{
        connection::READ_CHUNK,
        framing::{FrameDecoder, FrameError, LENGTH_PREFIX_LEN},
    },
    logging::LogFilter,
    proto,
    settings::{RuntimePatch, Settings},
    socket::{CloseReason, SocketId, SocketState, unix_ms},
};
use proptest::{prelude::*, test_runner::Config as ProptestConfig};
use prost::Message;

// ---------------------------------------------------------------------------------------------
// The largest allocation, per thread.

/// The system allocator, noting the size of the biggest block each thread asks for.
struct Watching;

thread_local! {
    /// The biggest block this thread asked for since [`largest_allocation`] started watching.
    /// A `const` `Cell` has no destructor and needs no lazy set-up, so the allocator may touch it.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is passed on unchanged to `System`; the only addition is a thread-local
// `Cell` update, which neither allocates nor unwinds.
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Watching = Watching;

/// Runs `f` and returns its result with the biggest block it allocated on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

// ---------------------------------------------------------------------------------------------
// Framing.

/// Streams that look like what each framing expects, with the mistakes peers make: lines with
/// `\r`, NULs and bytes that are not UTF-8, length prefixes that are right, one off, or lies up
/// to 4 GiB.
fn stream(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let line_piece = prop_oneof![
        20 => proptest::collection::vec(any::<u8>().prop_filter("not a newline", |b| *b != b'\n'), 0..=max / 2),
        1 => proptest::collection::vec(any::<u8>().prop_filter("not a newline", |b| *b != b'\n'), 0..=2 * max + 2),
        12 => Just(b"\n".to_vec()),
        4 => Just(b"\r\n".to_vec()),
        1 => Just(b"\r".to_vec()),
        1 => Just(vec![0u8; 3]),
        1 => Just(vec![0xff, 0xfe, 0xc3, 0x28]),
    ];
    let lines = proptest::collection::vec(line_piece, 0..32).prop_map(|v| v.concat());
    let claimed = prop_oneof![
        12 => Just(None),
        1 => Just(Some(u32::MAX)),
        1 => Just(Some(max as u32)),
        1 => Just(Some(max as u32 + 1)),
        1 => any::<u32>().prop_map(Some),
    ];
    let frame = (proptest::collection::vec(any::<u8>(), 0..=max), claimed).prop_map(|(body, claimed)| {
        let mut out = claimed.unwrap_or(body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    });
    let frames = proptest::collection::vec(frame, 0..12).prop_map(|v| v.concat());
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..600), lines, frames]
}

/// A max frame, and a stream for it.
fn max_and_stream() -> impl Strategy<Value = (usize, Vec<u8>)> {
    (1usize..=64).prop_flat_map(|max| (Just(max), stream(max)))
}

/// Read sizes: tiny, around the max, or whole.
fn cuts() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(prop_oneof![1usize..=4, 1usize..=80, Just(4096)], 0..40)
}

const FRAMINGS: [Framing; 3] = [Framing::Lines, Framing::LengthPrefixed, Framing::Raw];

proptest! {
    #![proptest_config(ProptestConfig { cases: 768, ..ProptestConfig::default() })]

    /// Any stream, cut anywhere, through every decoder: the frames the model expects, none longer
    /// than max, over-long ones refused as early as they can be, the buffer bounded.
    #[test]
    fn every_decoder_agrees_with_the_model_wherever_the_stream_is_cut(
        (max, bytes) in max_and_stream(),
        cuts in cuts(),
        eof in any::<bool>(),
    ) {
        for framing in FRAMINGS {
            codecs::check_against_model(framing, max, &bytes, &cuts, eof);
        }
    }

    /// Whatever is claimed, no single allocation made while decoding is larger than the limits
    /// allow (the frames handed out are split off the buffer, not copied).
    #[test]
    fn decoding_never_allocates_for_a_claimed_length(
        (max, bytes) in max_and_stream(),
        cuts in cuts(),
    ) {
        for framing in FRAMINGS {
            let read_size = cuts.iter().copied().max().unwrap_or(bytes.len()).max(1);
            let mut decoder = FrameDecoder::new(framing, max);
            let mut buf = BytesMut::with_capacity(read_size);
            let mut rest = &bytes[..];
            let mut reads = cuts.iter().copied().chain(std::iter::repeat(read_size));
            'stream: while !rest.is_empty() {
                let (read, after) = rest.split_at(reads.next().unwrap().clamp(1, rest.len()));
                rest = after;
                buf.extend_from_slice(read);
                loop {
                    let (decoded, largest) = largest_allocation(|| decoder.decode(&mut buf));
                    let bound = codecs::capacity_bound(max, read_size);
                    prop_assert!(
                        largest <= bound,
                        "{framing:?} allocated {largest} bytes in one block for a max frame of {max} (bound {bound})"
                    );
                    match decoded {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => break 'stream,
                    }
                }
            }
        }
    }
}

/// At the default `--max-frame` and the node's read size: a 4 GiB prefix is refused on its four
/// bytes, before any body, with no allocation; a prefix of exactly the max reserves the max and no
/// more; an endless line is refused once it passes the max, never buffering more than that and
/// one read.
#[test]
fn at_the_default_limit_a_huge_claim_costs_nothing_and_an_endless_line_is_cut_off() {
    let max = 1 << 20;
    for claim in [u32::MAX, (max + 1) as u32, 0x8000_0000] {
        let mut decoder = FrameDecoder::new(Framing::LengthPrefixed, max);
        let mut buf = BytesMut::from(&claim.to_be_bytes()[..]);
        let (decoded, largest) = largest_allocation(|| decoder.decode(&mut buf));
        assert!(matches!(decoded, Err(FrameError::TooLarge { max: m }) if m == max), "{claim:#x}: {decoded:?}");
        // Only the error itself (a boxed `io::Error`, a few bytes): nothing for the claim.
        assert!(largest < 1024, "refusing a {claim:#x}-byte claim allocated {largest} bytes");
    }
    let mut decoder = FrameDecoder::new(Framing::LengthPrefixed, max);
    let mut buf = BytesMut::from(&(max as u32).to_be_bytes()[..]);
    let (decoded, largest) = largest_allocation(|| decoder.decode(&mut buf));
    assert!(matches!(decoded, Ok(None)));
    assert!(largest <= max + LENGTH_PREFIX_LEN, "a max-sized claim reserved {largest} bytes");

    let read = vec![b'a'; READ_CHUNK];
    let mut decoder = FrameDecoder::new(Framing::Lines, max);
    let mut buf = BytesMut::new();
    let mut received = 0;
    loop {
        buf.extend_from_slice(&read);
        received += read.len();
        match decoder.decode(&mut buf) {
            Ok(None) => assert!(received <= max + 1, "{received} bytes of one line accepted"),
            Err(FrameError::TooLarge { .. }) => break,
            other => panic!("{other:?}"),
        }
        assert!(buf.capacity() <= codecs::capacity_bound(max, READ_CHUNK));
    }
    assert!(received < max + 1 + READ_CHUNK, "refused only after {received} bytes");
}

// ---------------------------------------------------------------------------------------------
// Bus payloads (MessagePack from Redis pub/sub).

/// A MessagePack value, written by hand so that headers can lie about what follows.
#[derive(Debug, Clone)]
enum Mp {
    Nil,
    Bool(bool),
    Int(i64),
    UInt(u64),
    F64(f64),
    Str(String),
    Bin(Vec<u8>),
    Array(Vec<Mp>),
    Map(Vec<(Mp, Mp)>),
    Ext(i8, Vec<u8>),
    /// A header (`marker` one of str32, bin32, array32, map32, ext32) claiming `len` of what
    /// follows, followed by nothing of its own.
    Lie(u8, u32),
    /// A byte that is no MessagePack marker at all (0xc1), or any raw byte.
    Raw(u8),
}

impl Mp {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Self::Nil => out.push(0xc0),
            Self::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
            Self::Int(i) => {
                out.push(0xd3);
                out.extend_from_slice(&i.to_be_bytes());
            }
            Self::UInt(u) if *u < 0x80 => out.push(*u as u8),
            Self::UInt(u) => {
                out.push(0xcf);
                out.extend_from_slice(&u.to_be_bytes());
            }
            Self::F64(f) => {
                out.push(0xcb);
                out.extend_from_slice(&f.to_be_bytes());
            }
            Self::Str(s) => {
                len_header(out, s.len(), 0xa0, 31, [0xd9, 0xda, 0xdb]);
                out.extend_from_slice(s.as_bytes());
            }
            Self::Bin(b) => {
                len_header(out, b.len(), 0xc4, 0, [0xc4, 0xc5, 0xc6]);
                out.extend_from_slice(b);
            }
            Self::Array(items) => {
                len_header(out, items.len(), 0x90, 15, [0xdc, 0xdc, 0xdd]);
                items.iter().for_each(|i| i.write(out));
            }
            Self::Map(pairs) => {
                len_header(out, pairs.len(), 0x80, 15, [0xde, 0xde, 0xdf]);
                for (k, v) in pairs {
                    k.write(out);
                    v.write(out);
                }
            }
            Self::Ext(kind, data) => {
                out.push(0xc7);
                out.push(data.len().min(255) as u8);
                out.push(*kind as u8);
                out.extend_from_slice(&data[..data.len().min(255)]);
            }
            Self::Lie(marker, len) => {
                out.push(*marker);
                out.extend_from_slice(&len.to_be_bytes());
            }
            Self::Raw(b) => out.push(*b),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }
}

/// A length header: the fix form up to `fix_max` (none when 0), then 8-, 16- or 32-bit lengths.
fn len_header(out: &mut Vec<u8>, len: usize, fix: u8, fix_max: usize, wide: [u8; 3]) {
    if fix_max > 0 && len <= fix_max {
        out.push(fix | len as u8);
    } else if len <= 0xff && wide[0] != wide[1] {
        out.extend_from_slice(&[wide[0], len as u8]);
    } else if len <= 0xffff {
        out.push(wide[1]);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(wide[2]);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

/// The names a bus message's parts go by, so that values land on real variants and fields.
const NAMES: [&str; 12] = [
    "Command",
    "Receipt",
    "Broadcast",
    "Control",
    "Runtime",
    "Send",
    "Close",
    "SetLabels",
    "upstreams",
    "log_filter",
    "idle_timeout",
    "max_connections",
];

fn mp_leaf() -> impl Strategy<Value = Mp> {
    prop_oneof![
        Just(Mp::Nil),
        any::<bool>().prop_map(Mp::Bool),
        any::<i64>().prop_map(Mp::Int),
        prop_oneof![Just(0u64), Just(1), Just(2), Just(3), Just(u64::MAX), any::<u64>()].prop_map(Mp::UInt),
        any::<f64>().prop_map(Mp::F64),
        prop_oneof![
            proptest::sample::select(NAMES.to_vec()).prop_map(str::to_owned),
            Just(uuid::Uuid::now_v7().to_string()),
            ".{0,40}",
        ]
        .prop_map(Mp::Str),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Mp::Bin),
        (any::<i8>(), proptest::collection::vec(any::<u8>(), 0..8)).prop_map(|(k, d)| Mp::Ext(k, d)),
        (proptest::sample::select(vec![0xdbu8, 0xc6, 0xdd, 0xdf, 0xc9]), any::<u32>()).prop_map(|(m, n)| Mp::Lie(m, n)),
        any::<u8>().prop_map(Mp::Raw),
    ]
}

fn mp_value() -> impl Strategy<Value = Mp> {
    mp_leaf().prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Mp::Array),
            proptest::collection::vec((inner.clone(), inner), 0..6).prop_map(Mp::Map),
        ]
    })
}

/// Structured but wrong: a real variant name (or index) over fields of any shape and count.
fn wrong_bus_message() -> impl Strategy<Value = Mp> {
    let tag = prop_oneof![
        proptest::sample::select(NAMES.to_vec()).prop_map(|n| Mp::Str(n.to_owned())),
        (0u64..8).prop_map(Mp::UInt),
    ];
    let fields = proptest::collection::vec(mp_value(), 0..7);
    (tag, fields, any::<bool>()).prop_map(|(tag, fields, as_map)| {
        let body = if as_map {
            Mp::Map(
                fields.into_iter().enumerate().map(|(i, v)| (Mp::Str(NAMES[i % NAMES.len()].to_owned()), v)).collect(),
            )
        } else {
            Mp::Array(fields)
        };
        Mp::Map(vec![(tag, body)])
    })
}

/// Nearly right: the fields of a real variant, each of the right type or, now and then, anything.
fn nearly_right_bus_message() -> impl Strategy<Value = Mp> {
    fn or_any(right: impl Strategy<Value = Mp> + 'static) -> BoxedStrategy<Mp> {
        prop_oneof![6 => right, 1 => mp_value()].boxed()
    }
    fn variant(name: &'static str, fields: Vec<BoxedStrategy<Mp>>) -> BoxedStrategy<Mp> {
        fields.prop_map(move |f| Mp::Map(vec![(Mp::Str(name.to_owned()), Mp::Array(f))])).boxed()
    }
    let text = || or_any(prop_oneof![socket_text(), ".{0,12}", Just("admin".to_owned())].prop_map(Mp::Str));
    let uint = || or_any(any::<u64>().prop_map(Mp::UInt));
    let int = || or_any(prop_oneof![-1i64..5, any::<i32>().prop_map(i64::from), any::<i64>()].prop_map(Mp::Int));
    let bin = || or_any(proptest::collection::vec(any::<u8>(), 0..16).prop_map(Mp::Bin));
    let flag = || or_any(any::<bool>().prop_map(Mp::Bool));
    let labels = || or_any(proptest::collection::vec((text(), text()), 0..3).prop_map(Mp::Map));
    let setting = || {
        or_any(
            prop_oneof![
                Just(Mp::Nil),
                prop_oneof![
                    "[0-9]{1,22}(ns|ms|s|m|h|d|y)",
                    Just("18446744073709552s 616ms".to_owned()),
                    Just("off".to_owned()),
                    Just("sticky".to_owned()),
                    Just("ppp=debug,[{x=/a+/}]".to_owned()),
                    ".{0,24}",
                ]
                .prop_map(Mp::Str),
            ]
            .boxed(),
        )
    };
    let max_connections = || or_any(prop_oneof![Just(Mp::Nil), any::<u64>().prop_map(Mp::UInt)]);
    let command = prop_oneof![
        variant("Send", vec![text(), bin()]),
        variant("Close", vec![text(), text(), text()]),
        variant("SetLabels", vec![text(), labels(), flag()]),
    ];
    let patch = vec![setting(), setting(), setting(), setting(), max_connections()].prop_map(Mp::Array);
    prop_oneof![
        variant("Command", vec![uint(), text(), or_any(command)]),
        variant("Receipt", vec![uint(), int(), text(), flag()]),
        // As older nodes send it, without `refused`.
        variant("Receipt", vec![uint(), int(), text()]),
        variant("Broadcast", vec![text(), int(), labels(), bin()]),
        variant("Control", vec![text()]),
        variant("Runtime", vec![text(), or_any(patch)]),
    ]
}

fn labels() -> impl Strategy<Value = HashMap<String, String>> {
    proptest::collection::hash_map(".{0,12}", ".{0,12}", 0..4)
}

fn socket_text() -> impl Strategy<Value = String> {
    let id = uuid::Uuid::now_v7();
    prop_oneof![
        Just(id.to_string()),
        Just(id.simple().to_string()),
        Just(id.urn().to_string()),
        Just(id.braced().to_string()),
        Just(id.to_string().to_uppercase()),
        any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()),
        ".{0,48}",
        "[0-9a-f-]{30,40}",
    ]
}

fn wire_command() -> impl Strategy<Value = WireCommand> {
    prop_oneof![
        (socket_text(), proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(socket, p)| WireCommand::Send { socket, payload: Bytes::from(p) }),
        (socket_text(), prop_oneof![Just("admin".to_owned()), Just("upstream".to_owned()), ".{0,12}"], ".{0,300}")
            .prop_map(|(socket, reason, detail)| WireCommand::Close { socket, reason, detail }),
        (socket_text(), labels(), any::<bool>()).prop_map(|(socket, labels, replace)| WireCommand::SetLabels {
            socket,
            labels,
            replace
        }),
    ]
}

fn runtime_patch() -> impl Strategy<Value = RuntimePatch> {
    let text = || proptest::option::of(".{0,16}");
    (text(), text(), text(), text(), proptest::option::of(any::<usize>())).prop_map(
        |(log_filter, idle_after, idle_timeout, balance, max_connections)| RuntimePatch {
            log_filter,
            idle_after,
            idle_timeout,
            balance,
            max_connections,
        },
    )
}

fn bus_message() -> impl Strategy<Value = BusMessage> {
    prop_oneof![
        (any::<u64>(), ".{0,16}", wire_command()).prop_map(|(request, reply_to, command)| BusMessage::Command {
            request,
            reply_to,
            command
        }),
        (any::<u64>(), any::<i32>(), ".{0,32}", any::<bool>())
            .prop_map(|(request, status, detail, refused)| BusMessage::Receipt { request, status, detail, refused }),
        (".{0,16}", any::<i32>(), labels(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(
            |(origin, scope, selector, p)| BusMessage::Broadcast { origin, scope, selector, payload: Bytes::from(p) }
        ),
        ".{0,16}".prop_map(|what| BusMessage::Control { what }),
        (".{0,16}", runtime_patch()).prop_map(|(origin, patch)| BusMessage::Runtime { origin, patch }),
    ]
}

/// Decodes a bus payload the way the subscriber does, checking that it does not panic, allocates
/// at most a bounded block (serde caps what a claimed length may preallocate), and that whatever
/// decodes encodes back to the same message.
fn decode_bus(bytes: &[u8]) -> Result<BusMessage, BusError> {
    let (decoded, largest) = largest_allocation(|| BusMessage::decode(bytes));
    assert!(largest <= (4 << 20) + 4 * bytes.len(), "decoding {} bytes allocated {largest} in one block", bytes.len());
    if let Ok(m) = &decoded {
        assert_eq!(&BusMessage::decode(&m.encode()).unwrap(), m, "what decodes re-encodes to itself");
    }
    decoded
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_on_the_bus_are_refused_or_decoded_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(m) = decode_bus(&bytes) {
            codecs::take_apart(m);
        }
    }

    #[test]
    fn any_messagepack_value_on_the_bus_is_refused_or_decoded_without_panic(v in mp_value()) {
        if let Ok(m) = decode_bus(&v.bytes()) {
            codecs::take_apart(m);
        }
    }

    #[test]
    fn nearly_right_bus_messages_are_refused_or_carried_out_without_panic(v in nearly_right_bus_message()) {
        if let Ok(m) = decode_bus(&v.bytes()) {
            codecs::take_apart(m);
        }
    }

    #[test]
    fn structured_but_wrong_bus_messages_never_panic(v in wrong_bus_message()) {
        if let Ok(m) = decode_bus(&v.bytes()) {
            codecs::take_apart(m);
        }
    }

    /// Real messages, then cut short, with bytes changed or inserted.
    #[test]
    fn real_bus_messages_round_trip_and_their_mutants_never_panic(
        m in bus_message(),
        cut in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        insert in proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
    ) {
        let bytes = m.encode();
        prop_assert_eq!(&decode_bus(&bytes).unwrap(), &m);
        codecs::take_apart(m);
        let _ = decode_bus(&bytes[..cut.index(bytes.len() + 1)]);
        let mut mutant = bytes.clone();
        for (at, b) in &flips {
            let i = at.index(mutant.len());
            mutant[i] = *b;
        }
        if let Some((at, b)) = insert {
            mutant.insert(at.index(mutant.len() + 1), b);
        }
        if let Ok(m) = decode_bus(&mutant) {
            codecs::take_apart(m);
        }
    }

    /// A command from the bus is valid exactly when its socket id is a UUID, and keeps its fields.
    #[test]
    fn wire_commands_with_any_fields_convert_or_say_why(w in wire_command()) {
        let parsed = uuid::Uuid::parse_str(match &w {
            WireCommand::Send { socket, .. } | WireCommand::Close { socket, .. } | WireCommand::SetLabels { socket, .. } => socket,
        });
        match (w.clone().into_command(), parsed) {
            (Ok(c), Ok(id)) => {
                prop_assert_eq!(c.socket(), Some(SocketId(id)));
                let _ = SocketId(id).unix_ms();
                match (c, w) {
                    (Command::Send { payload, .. }, WireCommand::Send { payload: p, .. }) => prop_assert_eq!(payload, p),
                    (Command::Close { reason, detail, .. }, WireCommand::Close { reason: r, detail: d, .. }) => {
                        let expected = if r == "admin" { CloseReason::Admin } else { CloseReason::Upstream };
                        prop_assert_eq!(reason, expected);
                        prop_assert_eq!(detail, d);
                    }
                    (Command::SetLabels { labels, replace, .. }, WireCommand::SetLabels { labels: l, replace: r, .. }) => {
                        prop_assert_eq!(labels, l);
                        prop_assert_eq!(replace, r);
                    }
                    (c, w) => prop_assert!(false, "{w:?} became {c:?}"),
                }
            }
            (Err(e), Err(_)) => prop_assert!(matches!(e, BusError::SocketId(_)), "{e}"),
            (got, parsed) => prop_assert!(false, "into_command {got:?} but the id parses as {parsed:?}"),
        }
    }

    /// Scopes and statuses from the bus: only the enum's values pass; anything else is refused
    /// (scope) or read as FAILED (status).
    #[test]
    fn any_scope_or_status_number_is_handled(n in prop_oneof![-2i32..6, any::<i32>()]) {
        prop_assert_eq!(bus::broadcast_from_wire(n, HashMap::new(), Bytes::new()).is_ok(), (0..=2).contains(&n));
        let r = bus::receipt_from_wire(n, String::new(), false);
        if !(0..=3).contains(&n) {
            prop_assert_eq!(r.status, proto::Status::Failed);
        }
    }

    /// Upstream commands as protobuf bytes: whatever decodes is validated without panic; ids and
    /// close texts are cut to their documented lengths.
    #[test]
    fn any_upstream_command_bytes_are_validated_without_panic(
        raw in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            (socket_text(), ".{0,400}", any::<i32>(), any::<u8>()).prop_map(|(socket, text, scope, which)| {
                let command = match which % 5 {
                    0 => proto::upstream_command::Command::Send(proto::Send { socket_id: socket, payload: text.into() }),
                    1 => proto::upstream_command::Command::Close(proto::Close { socket_id: socket, reason: text }),
                    2 => proto::upstream_command::Command::Broadcast(proto::Broadcast { scope, payload: text.into(), selector: HashMap::new() }),
                    3 => proto::upstream_command::Command::SetLabels(proto::SetLabels { socket_id: socket, labels: [(text.clone(), text)].into(), replace: scope % 2 == 0 }),
                    _ => return proto::UpstreamCommand { command_id: text, command: None }.encode_to_vec(),
                };
                proto::UpstreamCommand { command_id: scope.to_string(), command: Some(command) }.encode_to_vec()
            }),
        ],
    ) {
        let Ok(cmd) = proto::UpstreamCommand::decode(&raw[..]) else { return Ok(()) };
        let (id, parsed) = Command::from_proto(cmd.clone());
        prop_assert_eq!(id, Some(cmd.command_id.clone()).filter(|i| !i.is_empty()));
        match parsed {
            Ok(Command::Close { detail, .. }) => prop_assert!(detail.len() <= MAX_CLOSE_DETAIL),
            Ok(c) => {
                let _ = c.socket().map(|s| s.unix_ms());
            }
            Err(e) => prop_assert!(e.to_string().len() <= 64 + 64, "{e}"),
        }
    }
}

/// A nesting far past any real message: refused by the decoder's depth limit, never a stack
/// overflow (which would abort the whole node).
#[test]
fn deeply_nested_bus_payloads_are_refused_without_overflowing_the_stack() {
    for prefix in [&b""[..], b"\x81\xa7Command", b"\x81\xa7Runtime\x92\xa1o", b"\x81\xa9Broadcast\x94\xa1o\x00"] {
        for nest in [0x91u8, 0x81] {
            let mut bytes = prefix.to_vec();
            bytes.extend(std::iter::repeat_n(nest, 200_000));
            bytes.push(0xc0);
            // On a thread with a small stack, as a tokio worker's (2 MiB) is.
            let t = std::thread::Builder::new().stack_size(1 << 20).spawn(move || BusMessage::decode(&bytes).is_err());
            assert!(t.unwrap().join().expect("no stack overflow"), "a 200,000-deep nesting decoded");
        }
    }
}

/// A payload over the limit is refused by its length, before MessagePack looks at it.
#[test]
fn an_oversized_bus_payload_is_refused_before_decoding() {
    let m = BusMessage::Broadcast {
        origin: "n1".into(),
        scope: 0,
        selector: HashMap::new(),
        payload: Bytes::from(vec![b'x'; MAX_BUS_PAYLOAD]),
    };
    let bytes = m.encode();
    assert!(bytes.len() > MAX_BUS_PAYLOAD);
    let (decoded, largest) = largest_allocation(|| BusMessage::decode(&bytes));
    assert!(matches!(decoded, Err(BusError::TooLarge(_))));
    assert!(largest < 4096, "refusing it allocated {largest} bytes");
}
/// A duration too long for the settings' milliseconds is refused or kept as "very long"; it never
/// comes out short. Such a value reaches a node from `PATCH /v1/runtime` and, with no check but
/// the same validation, from anyone who can publish on `K:ch:control`.
#[test]
fn huge_runtime_durations_are_refused_or_saturated_never_wrapped() {
    let settings = Settings::new(&Config::default(), Arc::new(LogFilter::detached("info")));
    let patch = RuntimePatch { idle_timeout: Some("18446744073709552s 616ms".into()), ..RuntimePatch::default() };
    if settings.apply(&patch).is_ok() {
        let t = settings.idle_timeout();
        assert!(t.is_some_and(|t| t > Duration::from_secs(365 * 86_400)), "idle_timeout became {t:?}");
    }
    let patch = RuntimePatch { idle_after: Some("300000000y".into()), ..RuntimePatch::default() };
    if settings.apply(&patch).is_ok() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let socket = SocketState::new(addr, addr, ppp::socket::QueueBounds { messages: 1, bytes: 1 << 20 });
        let idle_after = settings.idle_after();
        assert!(
            socket.is_active(unix_ms(), idle_after),
            "a socket that just connected is inactive (idle_after {idle_after:?})"
        );
    }
}
