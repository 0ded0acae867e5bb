//! `Duration`: a duration written as a string such as `500ms`, `30s`, `5m` or `1h30m`.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The pattern every duration string must match (enforced by the API server).
///
/// One or more `<number><unit>` pairs, units `ms`, `s`, `m` and `h`; decimals allowed (`1.5s`).
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// A duration as written in a manifest: `500ms`, `30s`, `5m`, `1h30m`, `1.5s`.
///
/// The string is kept as written, so a manifest round-trips unchanged; [`Duration::parse`] turns
/// it into a [`std::time::Duration`]. Deserializing never fails on a malformed value (one bad
/// object must not break a whole watch); the compiler calls `parse` and reports the error.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(transparent)]
pub struct Duration(pub String);

/// Why a duration string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string was empty.
    #[error("empty duration; expected something like 500ms, 30s, 5m or 1h30m")]
    Empty,
    /// A number was expected at the given byte offset.
    #[error("invalid duration {input:?}: expected a number at offset {offset} (e.g. 500ms, 30s, 5m, 1h30m)")]
    ExpectedNumber {
        /// The whole input.
        input: String,
        /// Byte offset of the problem.
        offset: usize,
    },
    /// A unit (`ms`, `s`, `m`, `h`) was expected at the given byte offset.
    #[error("invalid duration {input:?}: expected a unit ms, s, m or h at offset {offset}")]
    ExpectedUnit {
        /// The whole input.
        input: String,
        /// Byte offset of the problem.
        offset: usize,
    },
    /// The value does not fit in a `std::time::Duration`.
    #[error("invalid duration {input:?}: too large")]
    Overflow {
        /// The whole input.
        input: String,
    },
}

/// Nanoseconds per unit, longest unit names first so that `ms` wins over `m`.
const UNITS: [(&str, u128); 4] =
    [("ms", 1_000_000), ("h", 3_600_000_000_000), ("m", 60_000_000_000), ("s", 1_000_000_000)];

impl Duration {
    /// Wraps a duration string without checking it.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The duration as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses the string (`500ms`, `30s`, `5m`, `1h30m`, `1.5s`) into a [`std::time::Duration`].
    ///
    /// Fractions below a nanosecond are truncated.
    pub fn parse(&self) -> Result<std::time::Duration, DurationError> {
        parse_duration(&self.0)
    }
}

fn parse_duration(input: &str) -> Result<std::time::Duration, DurationError> {
    if input.is_empty() {
        return Err(DurationError::Empty);
    }
    let bytes = input.as_bytes();
    let mut pos = 0;
    let mut total: u128 = 0;
    let overflow = || DurationError::Overflow { input: input.to_owned() };
    while pos < bytes.len() {
        let int_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        if pos == int_start {
            return Err(DurationError::ExpectedNumber { input: input.to_owned(), offset: pos });
        }
        let int_digits = &input[int_start..pos];
        let mut frac_digits = "";
        if pos < bytes.len() && bytes[pos] == b'.' {
            pos += 1;
            let frac_start = pos;
            while pos < bytes.len() && bytes[pos].is_ascii_digit() {
                pos += 1;
            }
            if pos == frac_start {
                return Err(DurationError::ExpectedNumber { input: input.to_owned(), offset: pos });
            }
            frac_digits = &input[frac_start..pos];
        }
        let rest = &input[pos..];
        let Some((unit, nanos_per_unit)) = UNITS.iter().find(|(name, _)| rest.starts_with(name)) else {
            return Err(DurationError::ExpectedUnit { input: input.to_owned(), offset: pos });
        };
        pos += unit.len();

        let whole: u128 = int_digits.parse().map_err(|_| overflow())?;
        let mut nanos = whole.checked_mul(*nanos_per_unit).ok_or_else(overflow)?;
        // Fraction: at most 13 digits matter (an hour is 3.6e12 ns); the rest is below 1 ns.
        let frac = &frac_digits[..frac_digits.len().min(13)];
        if !frac.is_empty() {
            let numerator: u128 = frac.parse().map_err(|_| overflow())?;
            let scale = 10u128.pow(u32::try_from(frac.len()).map_err(|_| overflow())?);
            nanos = nanos.checked_add(numerator * nanos_per_unit / scale).ok_or_else(overflow)?;
        }
        total = total.checked_add(nanos).ok_or_else(overflow)?;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| overflow())?;
    let subsec = u32::try_from(total % 1_000_000_000).map_err(|_| overflow())?;
    Ok(std::time::Duration::new(secs, subsec))
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Duration {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl From<String> for Duration {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl JsonSchema for Duration {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::time::Duration as Std;

    fn parse(s: &str) -> Result<Std, DurationError> {
        Duration::from(s).parse()
    }

    #[test]
    fn parses_simple_units() {
        assert_eq!(parse("500ms").unwrap(), Std::from_millis(500));
        assert_eq!(parse("30s").unwrap(), Std::from_secs(30));
        assert_eq!(parse("5m").unwrap(), Std::from_secs(300));
        assert_eq!(parse("1h").unwrap(), Std::from_secs(3600));
        assert_eq!(parse("0s").unwrap(), Std::ZERO);
    }

    #[test]
    fn parses_compound_and_fractions() {
        assert_eq!(parse("1h30m").unwrap(), Std::from_secs(5400));
        assert_eq!(parse("1m5s").unwrap(), Std::from_secs(65));
        assert_eq!(parse("2s500ms").unwrap(), Std::from_millis(2500));
        assert_eq!(parse("1.5s").unwrap(), Std::from_millis(1500));
        assert_eq!(parse("0.25h").unwrap(), Std::from_secs(900));
        assert_eq!(parse("1.0000000001s").unwrap(), Std::new(1, 0));
    }

    #[test]
    fn rejects_bad_inputs() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        for bad in ["5", "s", "5x", "-5s", "5 s", " 5s", "5s ", "1.s", ".5s", "5sec", "1h30", "1d", "5S"] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
        assert!(matches!(parse("5"), Err(DurationError::ExpectedUnit { offset: 1, .. })));
        assert!(matches!(parse("ms"), Err(DurationError::ExpectedNumber { offset: 0, .. })));
    }

    #[test]
    fn rejects_overflow() {
        assert!(matches!(
            parse("99999999999999999999999999999999999999999h"),
            Err(DurationError::Overflow { .. })
        ));
        assert!(matches!(parse("9999999999999999999h"), Err(DurationError::Overflow { .. })));
    }

    #[test]
    fn error_messages_name_the_input() {
        let err = parse("5x").unwrap_err().to_string();
        assert!(err.contains("\"5x\""), "{err}");
    }

    #[test]
    fn round_trips_as_a_plain_string() {
        let d: Duration = serde_json::from_str("\"1h30m\"").unwrap();
        assert_eq!(d.as_str(), "1h30m");
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1h30m\"");
    }
}
