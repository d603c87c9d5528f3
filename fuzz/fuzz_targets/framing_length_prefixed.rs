//! `--framing length-prefixed`: any stream, cut anywhere (see `framing.rs`).

#![no_main]

mod framing;

libfuzzer_sys::fuzz_target!(|data: &[u8]| framing::run(ppp::downstream::framing::Framing::LengthPrefixed, data));
