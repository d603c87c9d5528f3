//! The input of a framing target: a max frame, read sizes and whether the client closed, then the
//! stream. The properties are those of `tests/fuzz_codecs.rs`, from the shared `tests/codecs/`.

#[path = "../../tests/codecs/mod.rs"]
mod codecs;

use ppp::downstream::framing::Framing;

/// Splits `data` into (max, read sizes, eof, stream) and checks the decoder for `framing` on it.
pub fn run(framing: Framing, data: &[u8]) {
    let [head, count, rest @ ..] = data else { return };
    // Mostly small limits, where lengths and lines cross the max often; now and then up to 1 KiB.
    let max = if *head < 128 { 1 + usize::from(*head % 64) } else { 1 + usize::from(*head - 128) * 8 };
    let eof = count & 0x80 != 0;
    let cuts_len = usize::from(count & 0x0f).min(rest.len());
    let (cuts, stream) = rest.split_at(cuts_len);
    let cuts: Vec<usize> = cuts.iter().map(|&c| 1 + usize::from(c)).collect();
    codecs::check_against_model(framing, max, stream, &cuts, eof);
}
