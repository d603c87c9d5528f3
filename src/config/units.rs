//! The human units of settings: durations (`500ms`, `10s`, `2m`, `off`) and sizes (`64KiB`).

use std::time::Duration;

use super::IdleTimeout;

/// Parses a human duration: `500ms`, `10s`, `2m`, `1h 30m`.
///
/// # Errors
/// A message for clap when the text is not a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration like 500ms, 10s, 2m: {e}"))?;
    if d > MAX_DURATION {
        return Err(format!("`{text}` is longer than the longest duration allowed, 10 years"));
    }
    Ok(d)
}

/// The longest duration any setting takes: far beyond any sensible value, and small enough that
/// no arithmetic on times (unix milliseconds as `i64`, `Instant + Duration`) can overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Parses a duration that may be switched off with `off` (or `0`).
///
/// # Errors
/// A message for clap when the text is neither `off` nor a duration.
pub fn parse_optional_duration(text: &str) -> Result<IdleTimeout, String> {
    match text.trim() {
        "off" | "none" | "0" => Ok(IdleTimeout(None)),
        other => parse_duration(other).map(|d| IdleTimeout(Some(d))),
    }
}

/// Parses a byte size: a plain number, or one with a unit (`B`, `KiB`, `MiB`, `GiB`, `kB`, `MB`,
/// `GB`; `K`/`M`/`G` mean the binary units).
///
/// # Errors
/// A message for clap when the text is not a size.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("`{text}` is not a size like 65536, 64KiB, 1MiB"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("`{other}` is not a size unit (B, KiB, MiB, GiB, kB, MB, GB)")),
    };
    n.checked_mul(multiplier).and_then(|v| usize::try_from(v).ok()).ok_or_else(|| format!("`{text}` is too large"))
}
