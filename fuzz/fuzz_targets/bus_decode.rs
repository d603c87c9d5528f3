//! Bus payloads from Redis pub/sub: anything published on `K:ch:node:{node}`, `K:ch:broadcast` or
//! `K:ch:control` is decoded without panic, and what decodes re-encodes to itself and is handed on
//! (command, scope, status, runtime settings) without panic.

#![no_main]

#[path = "../../tests/codecs/mod.rs"]
mod codecs;

use ppp::cluster::redis::bus::BusMessage;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(message) = BusMessage::decode(data) else { return };
    assert_eq!(BusMessage::decode(&message.encode()).as_ref(), Ok(&message), "what decodes re-encodes to itself");
    codecs::take_apart(message);
});
