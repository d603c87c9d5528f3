//! Bus payloads from Redis pub/sub: anything published on `K:ch:node:{node}`, `K:ch:broadcast` or
//! `K:ch:control` is decoded without panic, and what decodes re-encodes to itself and is handed on
//! (command, scope, status, runtime settings) without panic.

#![no_main]

use std::sync::Arc;

use ppp::{
    cluster::redis::bus::{self, BusMessage},
    config::Config,
    logging::LogFilter,
    settings::Settings,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(message) = BusMessage::decode(data) else { return };
    assert_eq!(BusMessage::decode(&message.encode()).as_ref(), Ok(&message), "what decodes re-encodes to itself");
    match message {
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
        BusMessage::Runtime { patch, .. } => {
            let settings = Settings::new(&Config::default(), Arc::new(LogFilter::detached("info")));
            let _ = settings.apply(&patch);
        }
        BusMessage::Control { .. } => {}
    }
});
