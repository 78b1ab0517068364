//! Parsing and formatting of the unit-carrying values in `app.toml`: durations, byte sizes, CPU
//! amounts, percentages and request rates.
//!
//! Every parser has a matching formatter, and `parse(format(x)) == x` holds for every value a
//! parser can return, so the effective config printed by `berth check` parses back to the same
//! spec. `format_size_rounded` is the one formatter outside that pair: a size for people (`berth ps`,
//! messages), rounded, not meant to parse back. Error messages are lowercase sentences that name the
//! accepted units, because they end up in user-facing diagnostics.

use std::time::Duration;

/// The units [`parse_duration`] accepts, for messages.
pub(crate) const DURATION_UNITS: &str = "ms, s, m, h";

/// The units [`parse_size`] accepts, for messages.
pub(crate) const SIZE_UNITS: &str = "B, KiB, MiB, GiB, TiB, KB, MB, GB, TB";

/// Parses a duration such as `"500ms"`, `"2s"`, `"1m"`, `"1h"` or `"1m30s"`.
///
/// A duration is one or more `<number><unit>` parts with units `ms`, `s`, `m` and `h`, largest
/// unit first, each unit at most once. A part may have a decimal fraction (`"1.5s"`) as long as
/// the total is a whole number of milliseconds. A bare number is rejected: the unit is required.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_duration_detailed(s).map_err(|error| error.to_string())
}

/// Why a duration did not parse; [`DurationError::is_about_form`] separates "not written as a
/// duration at all" from the finer points, so diagnostics can pick the right hint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DurationError {
    #[error("`{text}` has no unit; add one of {DURATION_UNITS}, e.g. \"{text}s\"")]
    MissingUnit { text: String },
    #[error("`{unit}` is not a duration unit; accepted units: {DURATION_UNITS}")]
    UnknownUnit { unit: String },
    #[error("`{text}` is not a duration; write a number followed by a unit ({DURATION_UNITS})")]
    Malformed { text: String },
    #[error("`{text}` ends without a unit; accepted units: {DURATION_UNITS}")]
    TrailingNumber { text: String },
    #[error("`{text}` repeats a unit or lists a smaller unit before a larger one; write e.g. \"1m30s\"")]
    UnitOrder { text: String },
    #[error("`{text}` is more precise than a millisecond; durations have millisecond precision")]
    TooPrecise { text: String },
    #[error("`{text}` is too long a duration")]
    TooLong { text: String },
}

impl DurationError {
    /// True when the text is not shaped like a duration at all (as opposed to a well-formed
    /// duration with a problem such as unit order or precision).
    pub(crate) fn is_about_form(&self) -> bool {
        matches!(
            self,
            Self::MissingUnit { .. } | Self::UnknownUnit { .. } | Self::Malformed { .. } | Self::TrailingNumber { .. }
        )
    }
}

pub(crate) fn parse_duration_detailed(s: &str) -> Result<Duration, DurationError> {
    let text = s.trim();
    let owned = || text.to_owned();
    if text.is_empty() {
        return Err(DurationError::Malformed { text: owned() });
    }
    let looks_numeric = text.chars().all(|c| c.is_ascii_digit() || c == '.' || c == '-');
    if looks_numeric && text.parse::<f64>().is_ok() {
        return Err(DurationError::MissingUnit { text: owned() });
    }
    let mut total_nanos: u128 = 0;
    let mut rest = text;
    let mut previous_rank = usize::MAX;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        if number.is_empty() || unit.starts_with(char::is_whitespace) {
            return Err(DurationError::Malformed { text: owned() });
        }
        let Some((rank, nanos_per_unit)) = duration_unit(unit) else {
            return Err(if unit.is_empty() {
                DurationError::TrailingNumber { text: owned() }
            } else {
                DurationError::UnknownUnit { unit: unit.to_owned() }
            });
        };
        if rank >= previous_rank {
            return Err(DurationError::UnitOrder { text: owned() });
        }
        previous_rank = rank;
        let part =
            decimal_to_scaled(number, nanos_per_unit).ok_or_else(|| DurationError::Malformed { text: owned() })?;
        total_nanos = total_nanos.checked_add(part).ok_or_else(|| DurationError::TooLong { text: owned() })?;
        rest = after;
    }
    if !total_nanos.is_multiple_of(NANOS_PER_MILLI) {
        return Err(DurationError::TooPrecise { text: owned() });
    }
    let secs = u64::try_from(total_nanos / NANOS_PER_SEC).map_err(|_| DurationError::TooLong { text: owned() })?;
    let sub_nanos = u32::try_from(total_nanos % NANOS_PER_SEC).expect("a remainder modulo 1e9 fits in u32");
    Ok(Duration::new(secs, sub_nanos))
}

/// Formats a duration the way [`parse_duration`] reads it, largest unit first: `"1m30s"`,
/// `"1.5s"`, `"500ms"`, `"0s"`. Precision below a millisecond is dropped.
pub fn format_duration(duration: Duration) -> String {
    let mut millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    let mut res = String::new();
    for (unit, size) in [("h", 3_600_000), ("m", 60_000)] {
        let n = millis / size;
        if n > 0 {
            res.push_str(&format!("{n}{unit}"));
            millis %= size;
        }
    }
    let (secs, sub_millis) = (millis / 1_000, millis % 1_000);
    match (secs, sub_millis) {
        (0, 0) => {}
        (0, ms) => res.push_str(&format!("{ms}ms")),
        (s, 0) => res.push_str(&format!("{s}s")),
        (s, ms) => {
            let fraction = format!("{ms:03}");
            res.push_str(&format!("{s}.{}s", fraction.trim_end_matches('0')));
        }
    }
    res
}

/// Parses a byte size such as `"256MiB"`, `"1GiB"`, `"512KiB"`, `"100MB"`, `"1GB"` or `"4096B"`.
///
/// Binary units (`KiB`, `MiB`, `GiB`, `TiB`) are powers of 1024, decimal units (`KB`/`kB`, `MB`,
/// `GB`, `TB`) powers of 1000. The number is a whole number; the unit is required.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let number_len = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(number_len);
    if number.is_empty() {
        return Err(format!("`{text}` is not a size; write a whole number followed by a unit ({SIZE_UNITS})"));
    }
    if unit.is_empty() {
        return Err(format!("`{text}` has no unit; add one of {SIZE_UNITS}, e.g. \"{text}MiB\""));
    }
    if unit.starts_with('.') {
        return Err(format!(
            "`{text}` has a fraction; sizes are whole numbers, so use a smaller unit (e.g. \"1536MiB\" instead of \"1.5GiB\")"
        ));
    }
    let multiplier: u64 = match unit.trim_start() {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!("`{other}` is not a size unit; accepted units: {SIZE_UNITS}"));
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("`{text}` is too large a size"))
}

/// Formats a byte count with the largest unit that divides it exactly, preferring binary units:
/// `"256MiB"`, `"100MB"`, `"4095B"`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 8] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("TB", 1_000_000_000_000),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("KB", 1_000),
    ];
    if bytes == 0 {
        return "0B".to_owned();
    }
    for (unit, size) in UNITS {
        if bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

/// Formats a byte count for people rather than for `app.toml`: KiB, MiB or GiB, rounded (`"2KiB"`,
/// `"128.0MiB"`, `"1.5GiB"`). Unlike [`format_size`], it does not parse back to the same count.
pub fn format_size_rounded(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let b = bytes as f64;
    if b >= 1024.0 * MIB {
        format!("{:.1}GiB", b / (1024.0 * MIB))
    } else if b >= MIB {
        format!("{:.1}MiB", b / MIB)
    } else {
        format!("{:.0}KiB", b / 1024.0)
    }
}

/// Parses a CPU amount written as a string: `"500m"` (millicores), `"1"` or `"0.5"` (cores).
pub(crate) fn parse_cpu(s: &str) -> Result<u32, String> {
    let text = s.trim();
    let millis = if let Some(number) = text.strip_suffix('m') {
        number.parse::<u32>().map_err(|_| format!("`{text}` is not a CPU amount"))?
    } else {
        let scaled = decimal_to_scaled(text, 1_000).ok_or_else(|| format!("`{text}` is not a CPU amount"))?;
        u32::try_from(scaled).map_err(|_| format!("`{text}` is too many cores"))?
    };
    if millis == 0 {
        return Err("a CPU amount must be more than 0".to_owned());
    }
    Ok(millis)
}

/// Converts a CPU amount given as a TOML number of cores (`0.5`, `2`) to millicores.
pub(crate) fn cpu_from_cores(cores: f64) -> Result<u32, String> {
    let millis = cores * 1_000.0;
    if !millis.is_finite() || millis <= 0.0 {
        return Err(format!("a CPU amount must be more than 0, found {cores}"));
    }
    if (millis - millis.round()).abs() > 1e-6 {
        return Err(format!("`{cores}` cores is more precise than a millicore; round it to 3 decimals"));
    }
    if millis.round() > f64::from(u32::MAX) {
        return Err(format!("`{cores}` is too many cores"));
    }
    // Checked above: finite, positive, integral and within u32.
    Ok(millis.round() as u32)
}

/// Formats millicores the way [`parse_cpu`] reads them: `"500m"`.
pub(crate) fn format_cpu(millis: u32) -> String {
    format!("{millis}m")
}

/// Parses a percentage such as `"70%"` or `"0.5%"` into a fraction (`0.7`, `0.005`).
pub(crate) fn parse_percent(s: &str) -> Result<f64, String> {
    let text = s.trim();
    let Some(number) = text.strip_suffix('%') else {
        return Err(format!("`{text}` is not a percentage; write a number followed by `%`, e.g. \"1%\""));
    };
    let value: f64 = number
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .ok_or_else(|| format!("`{text}` is not a percentage; write e.g. \"1%\" or \"0.5%\""))?;
    if !(0.0..=100.0).contains(&value) {
        return Err(format!("`{text}` is outside 0% to 100%"));
    }
    Ok(value / 100.0)
}

/// Formats a fraction as the shortest percentage that [`parse_percent`] reads back exactly.
pub(crate) fn format_percent(fraction: f64) -> String {
    let percent = fraction * 100.0;
    for precision in 0..=17 {
        let text = format!("{percent:.precision$}");
        if text.parse::<f64>().map(|v| v / 100.0) == Ok(fraction) {
            return format!("{text}%");
        }
    }
    format!("{percent}%")
}

/// Parses a request rate such as `"20/s"` or `"600/m"` into a count and a period.
pub(crate) fn parse_rate(s: &str) -> Result<(u32, Duration), String> {
    let text = s.trim();
    let hint = "write a whole number of requests per second or minute, e.g. \"20/s\" or \"600/m\"";
    let Some((count, period)) = text.split_once('/') else {
        return Err(format!("`{text}` is not a rate; {hint}"));
    };
    let period = match period.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        other => return Err(format!("`{other}` is not a rate period; {hint}")),
    };
    let count = count.trim().parse::<u32>().map_err(|_| format!("`{text}` is not a rate; {hint}"))?;
    if count == 0 {
        return Err(format!("`{text}` allows no requests; the rate must be at least 1"));
    }
    Ok((count, period))
}

const NANOS_PER_MILLI: u128 = 1_000_000;
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Returns the rank (larger unit, larger rank) and the nanoseconds per unit.
fn duration_unit(unit: &str) -> Option<(usize, u128)> {
    match unit {
        "ms" => Some((0, NANOS_PER_MILLI)),
        "s" => Some((1, NANOS_PER_SEC)),
        "m" => Some((2, 60 * NANOS_PER_SEC)),
        "h" => Some((3, 3_600 * NANOS_PER_SEC)),
        _ => None,
    }
}

/// Multiplies a non-negative decimal number written as text (`"1.5"`) by `scale` exactly,
/// returning `None` for malformed text, overflow, or a result that is not a whole number.
fn decimal_to_scaled(number: &str, scale: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits_ok = |part: &str| part.chars().all(|c| c.is_ascii_digit());
    if whole.is_empty() || !digits_ok(whole) || !digits_ok(fraction) || fraction.len() > 18 {
        return None;
    }
    if number.ends_with('.') {
        return None;
    }
    let whole_part = whole.parse::<u128>().ok()?.checked_mul(scale)?;
    if fraction.is_empty() {
        return Some(whole_part);
    }
    let denominator = 10u128.pow(u32::try_from(fraction.len()).ok()?);
    let numerator = fraction.parse::<u128>().ok()?.checked_mul(scale)?;
    if !numerator.is_multiple_of(denominator) {
        return None;
    }
    whole_part.checked_add(numerator / denominator)
}

#[cfg(test)]
mod tests;
