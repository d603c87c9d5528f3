//! The human units of settings: durations (`500ms`, `10s`, `2m`, `off`) and sizes (`64KiB`).

use std::time::Duration;

use super::IdleTimeout;

/// Why a duration or size written by an operator (flag, environment, file, admin API) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Not a duration.
    #[error("`{text}` is not a duration like 500ms, 10s, 2m: {reason}")]
    Duration {
        /// What was written.
        text: String,
        /// Why it is not one.
        reason: String,
    },
    /// Longer than [`MAX_DURATION`].
    #[error("`{0}` is longer than the longest duration allowed, 10 years")]
    TooLong(String),
    /// Not a size.
    #[error("`{0}` is not a size like 65536, 64KiB, 1MiB")]
    Size(String),
    /// An unknown size unit.
    #[error("`{0}` is not a size unit (B, KiB, MiB, GiB, kB, MB, GB)")]
    SizeUnit(String),
    /// Beyond what this machine can count.
    #[error("`{0}` is too large")]
    TooLarge(String),
}

/// Parses a human duration: `500ms`, `10s`, `2m`, `1h 30m`.
///
/// # Errors
/// A message for clap when the text is not a duration.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| UnitError::Duration { text: text.to_owned(), reason: e.to_string() })?;
    if d > MAX_DURATION {
        return Err(UnitError::TooLong(text.to_owned()));
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
pub fn parse_optional_duration(text: &str) -> Result<IdleTimeout, UnitError> {
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
pub fn parse_size(text: &str) -> Result<usize, UnitError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| UnitError::Size(text.to_owned()))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(UnitError::SizeUnit(other.to_owned())),
    };
    n.checked_mul(multiplier).and_then(|v| usize::try_from(v).ok()).ok_or_else(|| UnitError::TooLarge(text.to_owned()))
}
